#!/usr/bin/env python3
"""CI step 2: the runtime in an environment without torch (DESIGN.md principle 7).

    .venv/bin/python .ci/torch_free.py        # after `python3 run.py test` made .venv

Builds a fresh venv holding only what `pip install 'retinanet-trt[cpu]'` needs, at the versions in
requirements.lock (the base dependencies and the `cpu` extra, and what they require, read from
the installed metadata of .venv; torch is not among them), installs the project itself without
resolving anything, exports the demo ONNX with the main .venv (export needs torch), then in the
torch-free venv runs trt-infer on a real photo, trt-eval --demo and trt-bench on it and checks
that `import torch` fails there. Installs come from the same pip configuration as run.py's (the
local index and wheel folder), with the same pinned installers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run  # noqa: E402 - the lock, the pinned installers and the pip flags run.py uses

EXTRAS = ("cpu",)  # the runtime install CI checks: base + CPU ONNX Runtime
MAIN_BIN = run.PY.parent


def runtime_distributions(extras: tuple[str, ...] = EXTRAS) -> set[str]:
    """Canonical names of retinanet-trt's base dependencies plus `extras`, and everything they
    require (markers evaluated here, requested extras followed), from .venv's installed metadata."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    todo += [Requirement(r) for e in extras for r in project["optional-dependencies"][e]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            dep = Requirement(text)
            # A dependency counts when its marker holds without extras or for an extra asked for.
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in (*req.extras, "")):
                todo.append(dep)
    return seen


def locked_pins() -> dict[str, str]:
    pins = {}
    for line in run.LOCK.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, version = line.split(";")[0].strip().split("==")
            pins[canonicalize_name(name)] = version
    return pins


def sh(cmd: list[str], timeout: float = 300, env: dict[str, str] | None = None, expect: int = 0) -> str:
    """Run a command, echo it, fail the step with its output unless it exits `expect`."""
    print("+", " ".join(map(str, cmd)), flush=True)
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != expect:
        sys.exit(f"torch-free CI: {cmd[0]} exited {proc.returncode} (expected {expect}):\n"
                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def build_env(where: Path) -> Path:
    """A venv with the locked runtime distributions and this project (non-editable); its bin/."""
    wanted = runtime_distributions()
    assert "torch" not in wanted, "a runtime dependency pulls torch"
    pins = locked_pins()
    missing = sorted(wanted - pins.keys())
    assert not missing, f"runtime dependencies not in requirements.lock: {missing} (run `python3 run.py lock`)"
    reqs = where / "runtime-requirements.txt"
    reqs.write_text("".join(f"{n}=={pins[n]}\n" for n in sorted(wanted)))
    env_dir = where / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = [py, "-m", "pip", "install", *run.PIP_FLAGS]
    sh([*pip, *run.BOOTSTRAP])
    # --no-deps: the list is complete (pip check below proves it); a resolve could move a version.
    sh([*pip, "--no-deps", "-r", reqs], timeout=600)
    # Build from a copy of the tree, so the build leaves nothing in the checkout.
    src = where / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    sh([*pip, "--no-deps", "--no-build-isolation", src])
    sh([py, "-m", "pip", "check"])
    return env_dir / "bin"


def main() -> int:
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="retinanet-trt-torch-free.") as tmp:
        where = Path(tmp)
        bin_dir = build_env(where)
        t_env = time.perf_counter()
        py = bin_dir / "python"
        # Run from the temporary folder, so `retinanet_trt` can only come from the installed wheel.
        env = {**os.environ, "PYTHONNOUSERSITE": "1"}
        os.chdir(where)

        out = sh([py, "-c", "import torch"], expect=1)
        assert "No module named 'torch'" in out, out
        sh([py, "-c", "import retinanet_trt.spec, retinanet_trt.runtime.detector, sys; "
                      "assert 'torch' not in sys.modules; print(retinanet_trt.runtime.detector.__file__)"], env=env)

        onnx = where / "demo.onnx"
        sh([MAIN_BIN / "trt-export", "--demo", "-o", onnx, "--quiet"])  # export needs torch: the main venv
        photo = Path(sh([MAIN_BIN / "python", "-c", "import os, skimage; print(os.path.join("
                         "os.path.dirname(skimage.__file__), 'data', 'astronaut.png'))"]).strip())
        assert photo.is_file(), photo

        for cmd in ("trt-infer", "trt-eval", "trt-bench", "trt-calib", "trt-build", "trt-export", "trt-inspect",
                    "trt-serve"):
            sh([bin_dir / cmd, "--help"], env=env)
        # A Triton repository from the wheel alone (its model.py template is package data).
        sh([bin_dir / "trt-serve", "export", onnx, "-o", where / "repo", "--platform", "python"], env=env)
        assert (where / "repo" / "retinanet_preprocess" / "1" / "model.py").is_file()
        sh([bin_dir / "trt-infer", onnx, photo, "-o", where / "infer"], env=env)
        dets = json.loads((where / "infer" / "detections.json").read_text())
        assert dets and all(d["file_name"].endswith("astronaut.png") for d in dets), dets[:2]
        sh([bin_dir / "trt-eval", onnx, "--demo", "--demo-images", "8", "--json", where / "eval.json"], env=env)
        ap = json.loads((where / "eval.json").read_text())
        sh([bin_dir / "trt-bench", onnx, "--warmup", "1", "--iterations", "3", "--json", where / "bench.json"], env=env)
        bench = json.loads((where / "bench.json").read_text())
        # The features that need torch say so in one line (exit 2), not with a traceback.
        msg = sh([bin_dir / "trt-bench", onnx, "--compare", "torch,ort-cpu"], env=env, expect=2)
        assert "needs torch" in msg and "Traceback" not in msg, msg
        msg = sh([bin_dir / "trt-export", "--demo", "-o", where / "x.onnx"], env=env, expect=2)
        assert "needs torch" in msg and "Traceback" not in msg, msg
        t_end = time.perf_counter()
    print(f"torch-free CI: PASS: {len(dets)} detections on astronaut.png, demo AP {_ap(ap)}, "
          f"bench post-process {bench['results']['ort-cpu']['postprocess_ms']['total']:.3g} ms; "
          f"env {t_env - t_start:.0f} s, runs {t_end - t_env:.0f} s", flush=True)
    return 0


def _ap(report: dict) -> str:
    stats = report.get("stats", report)
    value = stats.get("AP") if isinstance(stats, dict) else None
    return f"{value:.3g}" if isinstance(value, (int, float)) else "?"


if __name__ == "__main__":
    sys.exit(main())
