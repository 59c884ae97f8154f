"""The layering rule (DESIGN.md principle 7): the runtime imports no torch.

Every module under runtime/, spec/, tensorrt/, scoring/, serve/, calib/ and plugins/, the
inference-side library modules and the command-line entry points are imported in a fresh interpreter where importing torch
fails; a failure names the chain of modules whose top-level code led to it. torch stays in
model/ (the network and its backend, model/torch_backend.py), export/ (pipeline, fold), the
importers' conversion functions and the demo model, which only the torch paths load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

# Packages whose every module must import without torch.
TORCH_FREE_PACKAGES = [
    "retinanet_trt.runtime", "retinanet_trt.calib", "retinanet_trt.plugins", "retinanet_trt.serve",
    "retinanet_trt.spec", "retinanet_trt.tensorrt", "retinanet_trt.scoring",
]
# Single modules on the inference path (and the spec they all read).
TORCH_FREE_MODULES = [
    "retinanet_trt", "retinanet_trt.bench", "retinanet_trt.versions", "retinanet_trt.fileio",
    "retinanet_trt.export.naming",
    "retinanet_trt.demo.synthetic",  # trt-eval --demo and the calibration sets render it
]
# Every console script: its module must import without torch, and --help must work.
COMMANDS = {
    "trt-infer": "infer", "trt-eval": "eval", "trt-bench": "bench", "trt-calib": "calib",
    "trt-build": "build", "trt-export": "export", "trt-inspect": "inspect", "trt-serve": "serve",
}

# Runs in the child: block torch with a finder that records which module-level code asked for it.
_BLOCKER = textwrap.dedent("""
    import importlib, importlib.abc, json, pkgutil, sys

    chains = {}

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "torch" and not name.startswith("torch."):
                return None
            # The modules whose top-level code is running, outermost first: the import chain.
            frame, chain = sys._getframe(1), []
            while frame is not None:
                if frame.f_code.co_name == "<module>":
                    mod = frame.f_globals.get("__name__", "?")
                    if mod.startswith("retinanet_trt") and (not chain or chain[-1] != mod):
                        chain.append(mod)
                frame = frame.f_back
            chains.setdefault(CURRENT, " <- ".join(chain + [name]))
            raise ImportError(f"torch is blocked in this test (wanted by {chain[0] if chain else '?'})")

    sys.meta_path.insert(0, BlockTorch())
    spec = json.loads(sys.argv[1])
    names = list(spec["modules"])
    for pkg in spec["packages"]:
        mod = importlib.import_module(pkg)
        names += [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
    failures = {}
    for CURRENT in names:
        if CURRENT.endswith(".__main__"):
            continue
        try:
            importlib.import_module(CURRENT)
        except Exception as exc:  # noqa: BLE001 - report every module, not the first
            failures[CURRENT] = chains.get(CURRENT) or f"{type(exc).__name__}: {exc}"
    print(json.dumps({"checked": names, "failures": failures, "torch_loaded": "torch" in sys.modules}))
""")


def _run_blocked(modules: list[str], packages: list[str]) -> dict:
    spec = {"modules": modules, "packages": packages}
    proc = subprocess.run([sys.executable, "-c", _BLOCKER, json.dumps(spec)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runtime_calib_plugins_import_without_torch() -> None:
    cli = [f"retinanet_trt.cli.{m}" for m in COMMANDS.values()]
    result = _run_blocked(TORCH_FREE_MODULES + cli, TORCH_FREE_PACKAGES)
    assert not result["failures"], "modules that import torch (chain: importer <- ... <- torch):\n" + "\n".join(
        f"  {mod}: {chain}" for mod, chain in result["failures"].items()
    )
    assert not result["torch_loaded"]
    checked = set(result["checked"])
    # The walk really covered the packages (a typo in a package name would check nothing).
    assert {"retinanet_trt.runtime.postprocess", "retinanet_trt.runtime.anchors", "retinanet_trt.calib.int8",
            "retinanet_trt.plugins.end2end", "retinanet_trt.runtime.backends.ort_backend",
            "retinanet_trt.serve.triton_python", "retinanet_trt.serve.repository"} <= checked


def test_blocker_names_the_chain() -> None:
    """The check itself: a torch-bound module fails and its chain is named."""
    result = _run_blocked(["retinanet_trt.model.retinanet"], [])
    chain = result["failures"]["retinanet_trt.model.retinanet"]
    assert chain.startswith("retinanet_trt.model.retinanet") and chain.endswith("torch"), chain


_HELP = textwrap.dedent("""
    import importlib, sys
    sys.modules["torch"] = None  # `import torch` raises ImportError, as where it is not installed
    for mod in sys.argv[1:]:
        main = importlib.import_module(f"retinanet_trt.cli.{mod}").main
        try:
            code = main(["--help"])
        except SystemExit as exc:
            code = exc.code
        assert code in (0, None), (mod, code)
    assert sys.modules["torch"] is None
""")


def test_every_help_works_without_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", _HELP, *COMMANDS.values()], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for cmd in COMMANDS:
        assert f"usage: {cmd}" in proc.stdout


@pytest.mark.parametrize(("module", "args", "feature"), [
    ("bench", ["{model}", "--compare", "torch,ort-cpu"], "the torch backend"),
    ("infer", ["demo", "{image}", "--out", "{out_dir}"], "the torch backend"),
    ("export", ["--demo", "-o", "{out}"], "trt-export"),
])
def test_torch_paths_say_what_to_install(tmp_path, module: str, args: list[str], feature: str) -> None:
    """Without torch, the features that need it stop with one line naming the install."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")  # only its existence is checked before torch is needed
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 48)).save(image)
    argv = [a.format(model=model, image=image, out=tmp_path / "out.onnx", out_dir=tmp_path / "out") for a in args]
    code = ("import sys; sys.modules['torch'] = None\n"
            f"from retinanet_trt.cli.{module} import main\nsys.exit(main({argv!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and feature in lines[0] and "needs torch" in lines[0] and "pip install" in lines[0], lines
