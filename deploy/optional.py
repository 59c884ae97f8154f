"""The one way the runtime imports a package it does not depend on: ONNX Runtime, TensorRT, cuda-python.

    with requires("onnxruntime", "backend ort-cpu"):
        import onnxruntime as ort

A package that is missing (or cannot be imported) becomes MissingPackage, a UsageError whose one
line says which install brings it, so every command stops with that line and exit status 2, and
`Detector.load` raises it rather than a ModuleNotFoundError traceback. MissingPackage is also an
ImportError, so code that probes for a package (`except ImportError`) keeps working.

The import statement stays in the caller (not importlib.import_module), so type checkers and
tests/test_trt_api_names.py still see `import tensorrt as trt` with its real types.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from retinanet_trt.errors import UsageError

ORT_CPU_HINT = "pip install 'retinanet-trt[cpu]', or 'retinanet-trt[gpu]' on a GPU host"
ORT_GPU_HINT = "pip install 'retinanet-trt[gpu]' (onnxruntime-gpu, in place of onnxruntime) on a GPU host"

# Top-level module -> (what it is called, how to install it).
PACKAGES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("ONNX Runtime", ORT_CPU_HINT),
    "tensorrt": ("TensorRT", "pip install tensorrt on a GPU host (NVIDIA's wheels; JetPack ships it)"),
    "cuda": ("cuda-python", "pip install 'retinanet-trt[gpu]' on a GPU host (it brings cuda-python>=12.4: a 12.x "
                            "release with a CUDA 12 driver, e.g. JetPack 6)"),
}


class MissingPackage(UsageError, ImportError):
    """An optional package is missing here; the message names the install (one line)."""

    # `package` has a default: an unpickled exception is re-made from its message alone.
    def __init__(self, message: str, package: str = "") -> None:
        super().__init__(message)
        self.package = package


def install_hint(package: str) -> str:
    """How to install `package` (a top-level module name in PACKAGES)."""
    return PACKAGES[package][1]


def missing(package: str, feature: str | None = None, hint: str | None = None,
            cause: BaseException | None = None) -> MissingPackage:
    """The MissingPackage for `package`: "<feature> needs <name>, which is not installed here: <hint>".

    cause: the ImportError/OSError met; one that is not a plain "no module named <package>" (a
    broken install, a shared library that does not load) is quoted in the message.
    """
    name, default_hint = PACKAGES[package]
    hint = hint or default_hint
    absent = cause is None or (isinstance(cause, ModuleNotFoundError)
                               and (cause.name or "").split(".")[0] == package)
    state = "not installed" if absent else f"installed but does not import ({_first_line(cause)})"
    if feature:
        return MissingPackage(f"{feature} needs {name}, which is {state} here: {hint}", package)
    return MissingPackage(f"{name} is {state}: {hint}", package)


@contextlib.contextmanager
def requires(package: str, feature: str | None = None, hint: str | None = None) -> Iterator[None]:
    """Turn an ImportError (or the OSError of a native library that does not load) raised by the
    import statements in the block into MissingPackage(package, feature, hint)."""
    if package not in PACKAGES:
        raise ValueError(f"no install hint for {package!r}; add it to PACKAGES")
    try:
        yield
    except MissingPackage:
        raise
    except (ImportError, OSError) as exc:
        raise missing(package, feature, hint, exc) from None


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
