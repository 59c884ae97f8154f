"""The tree passes ruff (pyproject's rules: pycodestyle, pyflakes, isort, pyupgrade, bugbear)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_passes_on_the_whole_tree() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "deploy", "calib", "plugins",
                           "benchmarks", "tests", ".ci", "run.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
