"""The locked environment: requirements.lock pins every dependency exactly, and the venv matches it."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"requirements.lock line is not an exact pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


# onnxruntime-gpu (the `gpu` extra) provides the same module as onnxruntime (`cpu`), so one
# environment, and so one lock, can hold only one of them: the lock holds the CPU build the tests
# run, and the GPU one is installed from the extra on a GPU host.
UNLOCKABLE = {"onnxruntime-gpu"}
ORT_DISTRIBUTIONS = {"onnxruntime", "onnxruntime-gpu"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared() -> list[Requirement]:
    """The base dependencies and every extra's (the lock resolves them together, run.py lock)."""
    project = _project()
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_declared_dependency_is_locked_within_its_range() -> None:
    pins = _locked()
    for req in _declared():
        name = canonicalize_name(req.name)
        if name in UNLOCKABLE:
            continue
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: run `python3 run.py lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock pins {name}=={pins[name]} outside {req}"


def test_one_onnxruntime_per_install() -> None:
    """The base install has no ONNX Runtime and no torch; each extra brings at most one ORT."""
    project = _project()
    base = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert not base & (ORT_DISTRIBUTIONS | {"torch"}), base
    for extra, reqs in project["optional-dependencies"].items():
        names = {canonicalize_name(Requirement(r).name) for r in reqs}
        assert len(names & ORT_DISTRIBUTIONS) <= 1, f"extra {extra} lists both {sorted(ORT_DISTRIBUTIONS)}"
        assert "torch" not in names, f"extra {extra}: torch is installed on its own (run.py pins it)"
    assert not _locked().keys() & UNLOCKABLE


def test_torch_is_pinned_as_run_py_installs_it() -> None:
    assert _locked()["torch"] == "2.13.0"


@pytest.mark.parametrize("name", sorted(_locked()))
def test_installed_version_is_the_locked_one(name: str) -> None:
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{name} is locked but not installed: `python3 run.py test` installs the lock")
    # A local label (torch 2.13.0+cpu) is the same release as the plain pin.
    assert installed.split("+")[0] == _locked()[name], f"{name} {installed} installed, lock says {_locked()[name]}"
