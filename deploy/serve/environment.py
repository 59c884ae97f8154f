"""The local Triton that `trt-serve run` starts, and the Python its python-backend models run in.

Both are built once into a cache folder and reused (see cache_dir):

- Triton itself: the `nvidia-pytriton` wheel carries a complete Triton Inference Server binary
  with its python backend. It is installed with `pip install --no-deps --target`: only the binary is
  used, and the pytriton package's own requirements (numpy<2 among them) would fight this project's.
  Its python backend needs the stub built for the Python it embeds copied next to it.
- The models' Python: a venv of the interpreter whose libpython that stub links (Debian's
  /usr/bin/python3.X here), holding numpy 1.x (the stub is built against numpy 1.x: with numpy 2 its
  tensors come out wrong), the same Pillow / ONNX / ONNX Runtime as this environment, and
  retinanet_trt itself (editable from a checkout, so the server always runs the current code).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from retinanet_trt.errors import EnvironmentFault, UsageError

# nvidia-pytriton 0.7.0 is the release whose wheel carries Triton 2.51.0 (manylinux_2_35, x86_64);
# pinned so that every figure is measured on the same server. Its numpy<2 pin is why --no-deps.
PYTRITON = "nvidia-pytriton==0.7.0"
TRITON_VERSION = "2.51.0"
# The python backend stub of that Triton is built against numpy 1.x; 1.26.4 is the last 1.x.
SERVING_NUMPY = "numpy==1.26.4"
# Versions taken from this environment, so pre/post-process run the same libraries as trt-infer.
SAME_AS_HERE = ("pillow", "onnx", "onnxruntime")
# Only where a model's spec resizes with them (by resize_impl prefix). scikit-image: this
# environment's release (it accepts numpy 1.26); OpenCV: 4.11, the last release that accepts
# numpy 1.x (5.0 needs numpy 2).
EXTRAS = {"cv2": "opencv-python-headless==4.11.0.86", "skimage": "scikit-image"}
# setuptools >= 69 maps the package folders of an editable install (DESIGN.md, Layout).
BUILD_TOOLS = ("setuptools==84.2.1", "wheel==0.48.0")
ENV_VAR = "RETINANET_TRT_SITE"


def project_root() -> Path | None:
    """The checkout retinanet_trt runs from (its pyproject.toml), or None for an installed package."""
    import retinanet_trt

    root = Path(retinanet_trt.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "retinanet-trt"' in pyproject.read_text():
        return root
    return None


def cache_dir() -> Path:
    """$RETINANET_TRT_SERVE_CACHE, else .cache/serve in the checkout (git-ignored), else the user's
    cache folder (~/.cache/retinanet_trt/serve)."""
    if os.environ.get("RETINANET_TRT_SERVE_CACHE"):
        return Path(os.environ["RETINANET_TRT_SERVE_CACHE"])
    root = project_root()
    if root is not None:
        return root / ".cache" / "serve"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "retinanet_trt" / "serve"


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_dir: Path
    python_version: str  # the X.Y of the python backend stub installed next to the backend
    version: str = TRITON_VERSION


def _run(cmd: list[str], what: str, timeout: float = 900) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "Location" not in ln]
        raise EnvironmentFault(f"{what} failed: {' | '.join(lines[-3:]) or f'exit status {proc.returncode}'}")


def _libpython(stub: Path) -> Path | None:
    """The libpython the stub loads here (ldd), or None when one of its libraries is missing."""
    proc = subprocess.run(["ldd", str(stub)], capture_output=True, text=True)
    if proc.returncode != 0 or "not found" in proc.stdout:
        return None
    match = re.search(r"libpython\S*\s+=>\s+(\S+)", proc.stdout)
    return Path(match.group(1)).resolve() if match else None


def _python_for(version: str, libpython: Path | None = None) -> Path | None:
    """An interpreter of `version` (X.Y) that runs and, given `libpython`, is built on that very
    library: the stub embeds it, so site-packages must come from the same Python."""
    query = "import sys, sysconfig; print(sysconfig.get_config_var('LIBDIR')); print(sysconfig.get_config_var('INSTSONAME'))"
    candidates = [Path(f"/usr/bin/python{version}"), Path(f"/usr/local/bin/python{version}")]
    found = shutil.which(f"python{version}")
    candidates += [Path(found)] if found else []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        proc = subprocess.run([str(candidate), "-c", query], capture_output=True, text=True)
        if proc.returncode != 0:
            continue  # e.g. a pyenv shim for a version that is not selected
        libdir, soname = (proc.stdout.splitlines() + ["", ""])[:2]
        if libpython is None or (Path(libdir) / soname).resolve() == libpython:
            return candidate
    return None


def ensure_triton(cache: Path | None = None) -> TritonInstall:
    """The bundled Triton, installed into the cache on first use (a pip download of ~55 MB)."""
    cache = cache or cache_dir()
    target = cache / f"pytriton-{PYTRITON.split('==')[1]}"
    server = target / "pytriton" / "tritonserver"
    binary = server / "bin" / "tritonserver"
    if not binary.is_file():
        if sys.platform != "linux":
            raise UsageError("the bundled Triton server runs on Linux x86_64 only; use the Triton container elsewhere")
        cache.mkdir(parents=True, exist_ok=True)
        staging = cache / f".{target.name}.{os.getpid()}.part"
        shutil.rmtree(staging, ignore_errors=True)
        _run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
              "--target", str(staging), PYTRITON], f"pip install --no-deps {PYTRITON}")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    backend = server / "backends" / "python"
    stub = backend / "triton_python_backend_stub"
    marker = backend / "stub_python_version"
    if not stub.is_file() or not marker.is_file():
        stubs = server / "python_backend_stubs"
        versions = sorted((p.name for p in stubs.iterdir() if (p / "triton_python_backend_stub").is_file()),
                          key=lambda v: tuple(map(int, v.split("."))), reverse=True) if stubs.is_dir() else []
        usable = []
        for v in versions:
            lib = _libpython(stubs / v / "triton_python_backend_stub")
            if lib is not None and _python_for(v, lib) is not None:
                usable.append(v)
        if not usable:
            raise EnvironmentFault(f"none of the Triton python backend stubs ({', '.join(versions) or 'none found'}) "
                                   "finds its libpython here; install the system python3.X and libpython3.X it needs")
        shutil.copy2(stubs / usable[0] / "triton_python_backend_stub", stub)
        marker.write_text(usable[0])  # written last: a stub without its marker is replaced next time
    return TritonInstall(binary=binary, backend_dir=server / "backends", python_version=marker.read_text().strip())


def _pins(spec_resize_impls: set[str]) -> list[str]:
    pins = [SERVING_NUMPY]
    for dist in SAME_AS_HERE:
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(dist)
    for prefix, pin in sorted(EXTRAS.items()):
        if not any(impl.startswith(prefix) for impl in spec_resize_impls):
            continue
        if "==" not in pin:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                pin = f"{pin}=={importlib.metadata.version(pin)}"
        pins.append(pin)
    return pins


def ensure_python_env(python_version: str, resize_impls: set[str] | None = None, cache: Path | None = None) -> Path:
    """The site-packages folder of the models' venv (built on first use, ~30 s); its name carries
    a hash of what it holds, so a change of pins builds a new one."""
    cache = cache or cache_dir()
    triton = ensure_triton(cache)
    python = _python_for(python_version, _libpython(triton.backend_dir / "python" / "triton_python_backend_stub"))
    if python is None:
        raise EnvironmentFault(f"no python{python_version} here for the Triton python backend stub; install it")
    root = project_root()
    pins = _pins(resize_impls or set())
    key = hashlib.sha256(json.dumps([str(python), pins, str(root), BUILD_TOOLS]).encode()).hexdigest()[:12]
    venv = cache / f"pyenv-{python_version}-{key}"
    done = venv / ".complete"
    site = venv / "lib" / f"python{python_version}" / "site-packages"
    if done.is_file():
        return site
    cache.mkdir(parents=True, exist_ok=True)
    # A venv cannot be moved once made (its scripts name their folder), so it is made at its final
    # path; `.complete` marks it finished, and an unfinished one is rebuilt.
    shutil.rmtree(venv, ignore_errors=True)
    _run([str(python), "-m", "venv", str(venv)], f"{python} -m venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run(pip + list(BUILD_TOOLS) + pins, f"pip install {' '.join(pins)} (the Triton models' environment)")
    if root is not None:
        _run(pip + ["--no-deps", "--no-build-isolation", "-e", str(root)], f"pip install -e {root} (the Triton models' environment)")
    else:
        import retinanet_trt

        (site / "retinanet_trt").symlink_to(Path(retinanet_trt.__file__).resolve().parent, target_is_directory=True)
    done.write_text(json.dumps({"python": str(python), "pins": pins, "project": str(root)}) + "\n")
    return site


def describe_env(site: Path) -> dict[str, object]:
    """What the models' venv holds (its interpreter and pins), for benchmark reports."""
    marker = site.parents[2] / ".complete"
    with contextlib.suppress(OSError, json.JSONDecodeError):
        return dict(json.loads(marker.read_text()))
    return {}


def resize_impls_of(repo: Path) -> set[str]:
    """The resize implementations the repository's specs use (each python model has a spec.json)."""
    impls = set()
    for spec_file in repo.glob("*/1/spec.json"):
        match = re.search(r'"resize_impl":\s*"([a-z0-9_]+)"', spec_file.read_text())
        impls.add(match.group(1) if match else "pillow_uint8")
    return impls


@contextlib.contextmanager
def cache_lock(cache: Path | None = None) -> Iterator[None]:
    """One builder at a time (parallel test workers, two `trt-serve run`s): an flock on the cache."""
    import fcntl

    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare(repo: Path, cache: Path | None = None) -> tuple[TritonInstall, Path]:
    """The Triton install and the models' site-packages for serving `repo`, built when missing."""
    with cache_lock(cache):
        triton = ensure_triton(cache)
        return triton, ensure_python_env(triton.python_version, resize_impls_of(repo), cache)
