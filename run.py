#!/usr/bin/env python3
"""Set up `.venv` and run the main job or the tests: `python3 run.py demo` / `python3 run.py test`.

Needs only Python 3.10+. Every Python dependency is installed at the exact version in
requirements.lock (torch included, pinned to 2.13.0: on machines without CUDA that is the CPU
build; an unpinned torch pulls several GB of CUDA wheels), so every figure the project records
was measured with the packages a fresh install gets. Re-running skips the install while the lock
and pyproject.toml are unchanged.

    python3 run.py lock    # refresh requirements.lock from pyproject.toml (pip-tools), then commit it
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
LOCK = ROOT / "requirements.lock"
TORCH = "torch==2.13.0"
# Type stubs for the TensorRT static checks (mypy in the tests). --no-deps: the stubs depend on
# `tensorrt`, which only NVIDIA's index serves; pinned because the test repairs known stub bugs.
TRT_STUBS = "tensorrt-stubs==10.13.0.35.1"
# The lock tool itself, pinned so that a refresh is reproducible too.
PIP_TOOLS = "pip-tools==7.6.2"
PIP_FLAGS = ["--disable-pip-version-check", "-q"]
# The installers themselves, pinned like everything else (setuptools >= 69 maps the folders).
BOOTSTRAP = ["pip==26.3", "setuptools==84.2.1", "wheel==0.48.0"]


def _pip(*args: str) -> None:
    subprocess.check_call([str(PY), "-m", "pip", "install", *PIP_FLAGS, *args])


def _create_venv() -> None:
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)


def ensure_env() -> None:
    """Install requirements.lock, then this project without resolving anything again."""
    stamp = VENV / ".installed"
    want = hashlib.sha256(LOCK.read_bytes() + (ROOT / "pyproject.toml").read_bytes() + (TRT_STUBS + " ".join(BOOTSTRAP)).encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == want and PY.exists():
        return
    _create_venv()
    _pip(*BOOTSTRAP)
    _pip("-r", str(LOCK))
    # --no-deps: everything it needs came from the lock; a resolve here could move a version.
    _pip("--no-deps", "--no-build-isolation", "-e", str(ROOT))
    _pip("--no-deps", TRT_STUBS)
    stamp.write_text(want)


def refresh_lock() -> int:
    """Re-resolve pyproject.toml's dependencies (with the dev, cpu and export extras) and torch into
    requirements.lock: everything the tests need. Not `gpu`: onnxruntime-gpu and onnxruntime both
    provide the module `onnxruntime` and cannot share one environment."""
    _create_venv()
    _pip(PIP_TOOLS)
    cmd = [str(PY), "-m", "piptools", "compile", "--quiet", "--extra", "dev", "--extra", "cpu", "--extra", "export", "--strip-extras",
           "--no-emit-index-url", "--no-emit-find-links", "--no-header", "--output-file", str(LOCK),
           "pyproject.toml", "-"]
    subprocess.run(cmd, cwd=ROOT, input=f"{TORCH}\n", text=True, check=True)
    # The CPU wheel resolves as 2.13.0+cpu; the plain pin takes it where it lies on disk and the
    # CUDA build elsewhere, as `pip install torch==2.13.0` does.
    lines = [f"{TORCH}\n" if line.startswith("torch==") else line for line in LOCK.read_text().splitlines(True)]
    header = "# Exact versions of every dependency (pyproject.toml [dev,cpu,export] + torch), made by `python3 run.py lock`.\n"
    LOCK.write_text(header + "".join(lines))
    print(f"wrote {LOCK.name}; run `python3 run.py test`, then commit it", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "lock"):
        print("usage: python3 run.py demo [args...] | python3 run.py test [pytest args...] | python3 run.py lock",
              file=sys.stderr)
        return 2
    job, rest = argv[0], argv[1:]
    if job == "lock":
        return refresh_lock()
    ensure_env()
    if job == "demo":
        cmd = [str(PY), "-m", "retinanet_trt.cli.demo", *rest]
    else:
        cmd = [str(PY), "-m", "pytest", "-n", "2", "-q", *rest]
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
