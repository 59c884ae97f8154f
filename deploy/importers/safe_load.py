"""Read checkpoint files without ever running code stored in them.

- zip-format ``.pth``/``.pt`` and legacy torch files: ``torch.load(weights_only=True)``, with numpy
  arrays (some converted checkpoints hold them) and argparse.Namespace (torchvision's references)
  allowed;
- plain pickles (detectron2 ``.pkl`` "model" dicts, Detectron/Caffe2 ``.pkl`` "blobs"): a
  restricted unpickler that can only build numpy arrays, dicts, lists, tuples, strings and
  numbers; any other global is refused by name before anything is called;
- MindSpore ``.ckpt`` (protobuf) and ``.safetensors`` files: read as data (importers.mindspore_ckpt);
- Caffe ``.caffemodel`` (protobuf): recognised here, read with its ``.prototxt`` by importers.caffe.

The file's format is sniffed from its first bytes, not trusted from its extension.
"""

from __future__ import annotations

import _codecs
import argparse
import io
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.importers import mindspore_ckpt

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]

# torch.save's legacy (pre-1.6, non-zip) format starts with a pickle of this number.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafeCheckpointError(UsageError):
    """The checkpoint's pickle asks for a global that is not plain data; nothing was run."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Python 3 pickles (protocol < 3) store bytes as `_codecs.encode(text, "latin1")`; allow only that."""
    if encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(f"pickle calls _codecs.encode with encoding {encoding!r}; only latin1 is allowed")
    return _codecs.encode(text, encoding)


# (module, name) -> object. numpy 1.x pickles name numpy.core.*, numpy 2.x numpy._core.*; both
# resolve to the same data-only constructors.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): dict,  # a dict is all a state dict needs
    ("_codecs", "encode"): _latin1_encode,
}
for _pkg in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[(f"{_pkg}.multiarray", "_reconstruct")] = _np_multiarray._reconstruct
    _SAFE_GLOBALS[(f"{_pkg}.multiarray", "scalar")] = _np_multiarray.scalar
    _SAFE_GLOBALS[(f"{_pkg}.numeric", "_frombuffer")] = _np_numeric._frombuffer  # type: ignore[attr-defined]

# What torch.load(weights_only=True) additionally accepts: numpy arrays (numpy 2 pickles an
# array's dtype through its DType class), and argparse.Namespace, which torchvision's detection
# reference scripts store as "args" beside "model" (rebuilding one only sets attributes).
_TORCH_EXTRA_GLOBALS: list[Any] = [
    _np_multiarray._reconstruct, _np_multiarray.scalar, np.ndarray, np.dtype,
    *(type(np.dtype(c)) for c in "?bhilqBHILQefd"),
    argparse.Namespace,
]


@dataclass
class LoadedFile:
    """obj: what the file holds (dicts of tensors / arrays); kind: "torch", "pickle", "mindspore",
    "safetensors" or "caffe" (obj None: the caffe importer reads the file with its prototxt);
    notes: what the reader found (CRC verified, chunks joined)."""

    obj: Any
    kind: str
    notes: list[str] = field(default_factory=list)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only callables are numpy's array/dtype/scalar rebuilders and dict."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refused to unpickle: the file asks for the global {module}.{name}, which is not plain data "
                "(only numpy arrays, dicts, lists, tuples, strings and numbers are allowed); nothing from the "
                "file was run. If the file is trusted, re-save just its tensors (a dict of arrays)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError("refused to unpickle: the file uses persistent ids (external storage)")


def load_pickle(data: bytes | io.BufferedIOBase) -> Any:
    """Unpickle plain data only. latin1 lets Python 2 pickles (Detectron/Caffe2) rebuild numpy arrays."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    return RestrictedUnpickler(stream, encoding="latin1").load()


def load_checkpoint_file(path: str | Path) -> LoadedFile:
    """Load a checkpoint safely; UsageError for missing, empty, truncated, corrupt or unsafe files."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"checkpoint {p} is a folder; give the checkpoint file inside it (.pth, .pkl, .ckpt, .caffemodel)")
    if not p.is_file():
        raise UsageError(f"checkpoint {p} not found")
    with p.open("rb") as f:
        head = f.read(64)
    if not head:
        raise UsageError(f"checkpoint {p} is empty")
    if head.startswith(b"PK\x03\x04") or zipfile.is_zipfile(p):
        return LoadedFile(_torch_load(p), "torch")
    # Protobuf files start with a field key (0x0A: field 1 or 0x12: field 2, length-delimited; 0xA2 0x06:
    # field 100); no pickle starts so (protocol 2+ starts with 0x80, protocol 0/1 with an opcode letter).
    if mindspore_ckpt.cipher_mode(head) or mindspore_ckpt.looks_like_ckpt(head):
        tensors, notes = mindspore_ckpt.read_ckpt(p)
        return LoadedFile(tensors, "mindspore", notes)
    if mindspore_ckpt.looks_like_safetensors(head):
        tensors, notes = mindspore_ckpt.read_safetensors(p)
        return LoadedFile(tensors, "safetensors", notes)
    if head[0] == 0x08 and (p.suffix.lower() == ".onnx" or b"pytorch" in head or b"retinanet_trt" in head):
        # ModelProto starts with ir_version (field 1, varint): an exported model, not training weights.
        raise UsageError(f"{p} is an ONNX model, not a training checkpoint; run it with trt-infer / trt-eval / "
                         "trt-bench, or convert it with trt-calib / trt-build")
    if head[0] in (0x0A, 0x12) or head.startswith(b"\xa2\x06"):
        return LoadedFile(None, "caffe")
    if head.lstrip()[:6] in (b"name: ", b"layer ", b"layers", b"input:") or head.lstrip().startswith(b"#"):
        raise UsageError(f"{p} is text (a Caffe .prototxt?); pass the binary .caffemodel as the checkpoint and the "
                         "prototxt with --prototxt")
    try:
        with p.open("rb") as f:
            obj = load_pickle(f)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{p}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged or foreign file
        formats = {".caffemodel": "a Caffe .caffemodel (binary protobuf)", ".safetensors": "a .safetensors file",
                   ".ckpt": "a MindSpore .ckpt (protobuf)"}
        if p.suffix.lower() in formats:  # named as a format that is not a pickle: say that it is not one
            raise UsageError(f"{p} is not {formats[p.suffix.lower()]}: its bytes are none of the checkpoint formats "
                             "read here; check the file (a text or truncated copy?)") from None
        raise UsageError(f"{p} is truncated or not a checkpoint (pickle error: {_one_line(exc)})") from None
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return LoadedFile(_torch_load(p), "torch")
    return LoadedFile(obj, "pickle")


def _torch_load(p: Path) -> Any:
    import torch  # here: reading a pickle checkpoint (Detectron, detectron2 .pkl) needs no torch

    try:
        with torch.serialization.safe_globals(_TORCH_EXTRA_GLOBALS):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise UnsafeCheckpointError(
                f"{p}: refused to load: the checkpoint's pickle asks for {found.group(1)}, which is not a tensor or "
                "plain container (torch.load ran with weights_only=True, so nothing was run). A file saved as a "
                "whole module (torch.save(model)) must be re-saved as torch.save(model.state_dict())"
            ) from None
        raise UsageError(f"{p} is truncated or corrupt ({_one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - zip/pickle/storage errors all mean a damaged file
        raise UsageError(f"{p} is truncated or corrupt ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
