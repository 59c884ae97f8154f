"""Loading custom TensorRT plugin libraries (`--plugin-lib PATH`) with ctypes, without tensorrt.

A plugin library registers its creators with TensorRT's global registry from static initialisers
when it is loaded, so loading it into the process before the ONNX parser or the runtime needs the
plugin is all it takes. It is loaded with RTLD_GLOBAL so that its symbols are visible to libraries
loaded later, and kept referenced so it is never unloaded. Loading fails with a UsageError that
says what is wrong with the file, in place of the loader's bare message.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

from retinanet_trt.errors import UsageError

# realpath -> handle: a library loaded twice would register its creators twice, and a handle
# that is garbage-collected could let the library be unloaded while TensorRT still uses it.
_LOADED: dict[str, ctypes.CDLL] = {}

_ELF_MAGIC = b"\x7fELF"
_PE_MAGIC = b"MZ"


def _explain(path: str, message: str) -> str:
    """The loader's message, with the likely cause and what to do."""
    if "cannot open shared object file" in message:  # the file itself exists: a dependency is missing
        return (f"plugin library {path} needs a library that is not found ({message}); "
                f"add its folder to LD_LIBRARY_PATH (TensorRT's lib folder, say)")
    if "undefined symbol" in message:
        return (f"plugin library {path} does not match the TensorRT in this environment ({message}); "
                f"rebuild it against this TensorRT version")
    if "wrong ELF class" in message or "invalid ELF header" in message or "not a dynamic executable" in message:
        return f"{path} is not a shared library for this machine ({message})"
    return f"plugin library {path} could not be loaded: {message}"


def check_plugin_library(path: str | os.PathLike[str]) -> Path:
    """The resolved path of a plugin library file, or a UsageError saying why it cannot be one."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"plugin library {p} not found")
    if p.is_dir():
        raise UsageError(f"plugin library {p} is a folder; give the .so (or .dll) file")
    try:
        with p.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise UsageError(f"plugin library {p} cannot be read ({exc.strerror})") from exc
    if not (magic.startswith(_ELF_MAGIC) or magic.startswith(_PE_MAGIC)):
        raise UsageError(f"{p} is not a shared library (no ELF or PE header); give the compiled plugin .so")
    return Path(os.path.realpath(p))


def load_plugin_libraries(paths: Sequence[str | os.PathLike[str]]) -> list[ctypes.CDLL]:
    """Load each plugin library once per process; returns the handles in the order given.

    Raises UsageError for a missing file, a folder, a file that is not a shared library, or one
    the dynamic loader rejects (a missing dependency, a TensorRT version mismatch)."""
    handles = []
    for path in paths:
        real = str(check_plugin_library(path))
        if real not in _LOADED:
            try:
                _LOADED[real] = ctypes.CDLL(real, mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise UsageError(_explain(os.fspath(path), str(exc))) from exc
        handles.append(_LOADED[real])
    return handles


def loaded_plugin_libraries() -> list[str]:
    """Real paths of the plugin libraries loaded so far (for sidecars and reports)."""
    return list(_LOADED)
