"""MindSpore RetinaNet ``.ckpt``: recognised, read without MindSpore, and refused with the reason.

Reading is cheap: a ``.ckpt`` is one protobuf message (mindspore/ccsrc/utils/checkpoint.proto)::

    Checkpoint { repeated Value value = 1; }
    Value      { string tag = 1; TensorProto tensor = 2; MapTensorProto maptensor = 3; }
    TensorProto{ repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }

so a 40-line wire-format scan gives every tensor's name, dtype and shape. Importing is not
possible without changing the outputs: MindSpore's official/cv/RetinaNet is an SSD-style port
whose architecture our model cannot express (facts sheet section 6a), so the importer says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from retinanet_trt.errors import UsageError

NAME = "mindspore"

NOT_SUPPORTED_REASON = (
    "MindSpore's RetinaNet (official/cv/RetinaNet) is an SSD-style port that this toolchain's model cannot "
    "express: a separate head per FPN level (multi_cls_layers.0..4, not one shared head), ReLU before the "
    "residual add in every bottleneck, TensorFlow 'same' padding (extra bottom/right pad on stride-2 convs and "
    "the stem pool), FPN convs without bias and fixed-size (not x2) nearest resizes, 81 classes with a "
    "background channel and (dy, dx, dh, dw) box deltas on normalised anchors; mapping its weights onto a "
    "shared-head PyTorch RetinaNet would change its outputs"
)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("varint runs past the end")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one message: ints for varints, bytes for the rest."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("field runs past the end")
            value, pos = buf[pos : pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def read_ckpt_index(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """tensor name -> (MindSpore dtype name, shape), without reading tensor data into arrays."""
    p = Path(path)
    index: dict[str, tuple[str, tuple[int, ...]]] = {}
    try:
        for number, _, value in _fields(p.read_bytes()):
            if number != 1 or not isinstance(value, bytes):
                raise ValueError("not a Checkpoint message")
            entry = {n: v for n, _, v in _fields(value) if n in (1, 2)}
            tag, tensor = entry.get(1), entry.get(2)
            if not isinstance(tag, bytes) or not isinstance(tensor, bytes):
                continue  # a MapTensor entry: no plain tensor to list
            dims: list[int] = []
            dtype = ""
            for n, wire, v in _fields(tensor):
                if n == 1 and wire == 0 and isinstance(v, int):
                    dims.append(v)
                elif n == 1 and isinstance(v, bytes):  # packed dims
                    pos = 0
                    while pos < len(v):
                        d, pos = _varint(v, pos)
                        dims.append(d)
                elif n == 2 and isinstance(v, bytes):
                    dtype = v.decode("utf-8", "replace")
            index.setdefault(tag.decode("utf-8", "replace"), (dtype, tuple(dims)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p} is truncated or not a checkpoint (protobuf scan: {exc})") from None
    if not index:
        raise UsageError(f"{p} is not a checkpoint: no tensors found")
    return index


def refuse(index: dict[str, tuple[str, tuple[int, ...]]], path: str | Path) -> NoReturn:
    """Raise the UsageError that explains why this MindSpore checkpoint cannot be imported."""
    names = sorted(index)
    example = next((n for n in names if ".multi_box." in n), names[0])
    if any(".multi_box.multi_cls_layers." in n for n in names):
        raise UsageError(
            f"{path}: MindSpore RetinaNet checkpoint ({len(names)} tensors, e.g. {example}) is not supported: "
            f"{NOT_SUPPORTED_REASON}"
        )
    raise UsageError(
        f"{path}: MindSpore checkpoint ({len(names)} tensors, e.g. {example}) holds no RetinaNet head "
        "(no multi_box.multi_cls_layers.*); only RetinaNet checkpoints are importable, and MindSpore's "
        f"RetinaNet is not supported either: {NOT_SUPPORTED_REASON}"
    )
