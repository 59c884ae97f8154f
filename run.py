#!/usr/bin/env python3
"""Set up `.venv` and run the main job or the tests: `python3 run.py demo` / `python3 run.py test`.

Needs only Python 3.10+. torch is pinned to 2.13.0: on machines without CUDA that is the CPU build
(an unpinned torch pulls several GB of CUDA wheels). Re-running skips the install while
pyproject.toml is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
TORCH = "torch==2.13.0"
# Type stubs for the TensorRT static checks (mypy in the tests). --no-deps: the stubs depend on
# `tensorrt`, which only NVIDIA's index serves; pinned because the test repairs known stub bugs.
TRT_STUBS = "tensorrt-stubs==10.13.0.35.1"


def ensure_env() -> None:
    stamp = VENV / ".installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (TORCH + TRT_STUBS).encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == want and PY.exists():
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.check_call(pip + ["--upgrade", "pip", "setuptools>=69", "wheel"])
    subprocess.check_call(pip + [TORCH])
    subprocess.check_call(pip + ["-e", f"{ROOT}[dev]"])
    subprocess.check_call(pip + ["--no-deps", TRT_STUBS])
    stamp.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print("usage: python3 run.py demo [args...] | python3 run.py test [pytest args...]", file=sys.stderr)
        return 2
    ensure_env()
    job, rest = argv[0], argv[1:]
    if job == "demo":
        cmd = [str(PY), "-m", "retinanet_trt.cli.demo", *rest]
    else:
        cmd = [str(PY), "-m", "pytest", "-n", "2", "-q", *rest]
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
