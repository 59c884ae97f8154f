"""Start-up cost of the runtime: importing the Detector and each command's --help, fresh processes.

    python benchmarks/startup.py --before 2eda9f2 --json benchmarks/results/startup.json

Each figure is the median wall time of --runs fresh interpreter processes (after one untimed run
that warms the file cache), so it is what a user waits for. With --before REV the same commands
run, interleaved round-robin with the current tree's, against the package as it was at REV: a git
worktree of REV seen through a folder `retinanet_trt/` of links (deploy/* plus calib/ and
plugins/, the layout pyproject.toml maps), put first on PYTHONPATH so it shadows the editable
install. Targets (issue 12): Detector import <= 0.5 s, each --help <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retinanet_trt.versions import package_versions

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMANDS = ("trt-infer", "trt-eval", "trt-bench", "trt-calib", "trt-build", "trt-export", "trt-inspect")
TARGETS_S = {"import_detector": 0.5, "help": 1.0}
IMPORT_DETECTOR = "from retinanet_trt.runtime.detector import Detector"


def cases() -> dict[str, list[str]]:
    """name -> command line; 'python' is the bare interpreter, the floor under every figure."""
    out = {"python": [sys.executable, "-c", "pass"], "import_detector": [sys.executable, "-c", IMPORT_DETECTOR]}
    out.update({f"{cmd} --help": [str(BIN / cmd), "--help"] for cmd in COMMANDS})
    return out


def package_view(tree: Path, where: Path) -> Path:
    """A folder whose `retinanet_trt` package is `tree`'s deploy/, calib/ and plugins/ (by links)."""
    pkg = where / "retinanet_trt"
    pkg.mkdir(parents=True)
    for entry in (tree / "deploy").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for sub in ("calib", "plugins"):
        (pkg / sub).symlink_to(tree / sub)
    return where


def time_once(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-1000:]}")
    return elapsed


def measure(envs: dict[str, dict[str, str]], runs: int) -> dict[str, dict[str, dict[str, float]]]:
    """{variant: {case: {median_s, min_s, max_s}}}, variants interleaved run by run."""
    samples: dict[str, dict[str, list[float]]] = {v: {c: [] for c in cases()} for v in envs}
    for case, cmd in cases().items():
        for env in envs.values():
            time_once(cmd, env)  # warm the file cache; not timed
        for _ in range(runs):
            for variant, env in envs.items():
                samples[variant][case].append(time_once(cmd, env))
    return {v: {c: {"median_s": round(statistics.median(s), 3), "min_s": round(min(s), 3), "max_s": round(max(s), 3)}
                for c, s in by_case.items()} for v, by_case in samples.items()}


def check_view(env: dict[str, str], view: Path) -> None:
    """The --before variant really imports the old tree, not the editable install."""
    out = subprocess.run([sys.executable, "-c", "import retinanet_trt.calib.int8 as m; print(m.__file__)"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    if not out.startswith(str(view)):
        raise RuntimeError(f"--before view imports {out}, not the worktree")


def verdicts(figures: dict[str, dict[str, float]]) -> dict[str, bool]:
    out = {"import_detector": figures["import_detector"]["median_s"] <= TARGETS_S["import_detector"]}
    out.update({f"{cmd} --help": figures[f"{cmd} --help"]["median_s"] <= TARGETS_S["help"] for cmd in COMMANDS})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", metavar="REV", help="also measure the package as it was at this git revision")
    ap.add_argument("--runs", type=int, default=7, help="timed fresh processes per command and variant")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    # .pyc files are written and reused as a user's install does (after the warm-up run).
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    envs = {"after": dict(base_env)}
    with tempfile.TemporaryDirectory(prefix="startup-bench.") as tmp:
        before_rev = None
        if args.before:
            tree = Path(tmp) / "tree"
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), args.before], cwd=ROOT, check=True)
            before_rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True,
                                        text=True, check=True).stdout.strip()
            view = package_view(tree, Path(tmp) / "view")
            envs = {"before": {**base_env, "PYTHONPATH": str(view)}, **envs}
            check_view(envs["before"], view)
        try:
            results = measure(envs, args.runs)
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(Path(tmp) / "tree")], cwd=ROOT, check=False)

    report = {
        "benchmark": "startup: fresh-process wall time of importing the Detector and of each --help",
        "protocol": {"runs": args.runs, "statistic": "median of fresh processes after one untimed warm-up run; "
                     "before/after interleaved", "targets_s": TARGETS_S},
        "before_revision": before_rev,
        "results": results,
        "meets_targets": {v: verdicts(r) for v, r in results.items()},
        "versions": package_versions(),
    }
    width = max(len(c) for c in cases())
    print(f"{'median s':<{width}}  " + "  ".join(f"{v:>8}" for v in results))
    for case in cases():
        print(f"{case:<{width}}  " + "  ".join(f"{results[v][case]['median_s']:>8.3f}" for v in results))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"JSON -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
