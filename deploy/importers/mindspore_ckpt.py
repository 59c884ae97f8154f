"""MindSpore checkpoint files read without MindSpore: ``.ckpt`` (protobuf) and ``.safetensors``.

A ``.ckpt`` is the concatenation of one serialized ``Checkpoint`` message per parameter
(mindspore/ccsrc/utils/checkpoint.proto), which protobuf reads as one message with a repeated field::

    Checkpoint  { repeated Value value = 1; }
    Value       { string tag = 1; oneof { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
    TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }

- tensors over 512 MiB are written as consecutive chunks with the same tag and dims: joined here;
- MindSpore >= 2.3 with crc_check=True appends b"crc_num" + crc32(messages).to_bytes(10, "big"):
  stripped and verified;
- enc_key encrypts the whole stream (AES-GCM, AES-CBC, SM4-CBC) behind a 4-byte magic: refused,
  since only MindSpore with the key can read it;
- MindSpore >= 2.4 format="safetensors" writes a plain safetensors file: read with `safetensors`.

The scan is the protobuf wire format itself (importers.protowire, no generated code); nothing is
unpickled or run.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.importers.protowire import fields, varint

_CRC_TAG = b"crc_num"
_CRC_TRAILER = len(_CRC_TAG) + 10
# The first 4 bytes (little-endian int32) of an encrypted checkpoint (mindspore/core/utils/crypto.h).
_CIPHER_MAGICS = {0x7F3A5ED8: "AES-GCM", 0x7F3A5ED9: "AES-CBC or SM4-CBC"}
_DTYPES = {
    "Int8": np.int8, "UInt8": np.uint8, "Int16": np.int16, "UInt16": np.uint16, "Int32": np.int32,
    "UInt32": np.uint32, "Int64": np.int64, "UInt64": np.uint64, "Float16": np.float16,
    "Float32": np.float32, "Float64": np.float64, "Bool": np.bool_,
}


def cipher_mode(head: bytes) -> str | None:
    """The encryption mode when `head` (the file's first bytes) starts an encrypted checkpoint."""
    return _CIPHER_MAGICS.get(int.from_bytes(head[:4], "little")) if len(head) >= 4 else None


def looks_like_ckpt(head: bytes) -> bool:
    """Whether `head` starts a Checkpoint message: field 1 (Value) whose own field 1 (tag) follows.

    A Caffe NetParameter also starts with field 1 (its name), but a name never begins with 0x0A.
    """
    if not head or head[0] != 0x0A:
        return False
    try:
        _, pos = varint(memoryview(head), 1)
    except ValueError:
        return False
    return pos < len(head) and head[pos] == 0x0A


def _tensor_proto(buf: memoryview) -> tuple[list[int], str, memoryview]:
    """TensorProto -> (dims, tensor_type, tensor_content); dims packed or not."""
    dims: list[int] = []
    dtype, content = "", memoryview(b"")
    for number, wire, value in fields(buf):
        if number == 1 and wire == 0 and isinstance(value, int):
            dims.append(value)
        elif number == 1 and isinstance(value, memoryview):
            pos = 0
            while pos < len(value):
                d, pos = varint(value, pos)
                dims.append(d)
        elif number == 2 and isinstance(value, memoryview):
            dtype = bytes(value).decode("utf-8")
        elif number == 3 and isinstance(value, memoryview):
            content = value
    return dims, dtype, content


def _to_array(tag: str, dims: list[int], dtype: str, content: bytes) -> Any:
    """One parameter's value: an ndarray of its dtype and shape, or a str for "str" entries."""
    if dtype == "str":
        return content.decode("utf-8", "replace")
    if dtype == "BFloat16":  # the upper half of a float32
        raw = np.frombuffer(content, dtype="<u2").astype(np.uint32) << 16
        array = raw.view(np.float32)
    elif dtype in _DTYPES:
        array = np.frombuffer(content, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
    else:
        raise ValueError(f"{tag} has tensor_type {dtype!r}, which this reader does not know")
    count = int(np.prod(dims)) if dims else 1
    if array.size != count:
        raise ValueError(f"{tag} holds {array.size} values for shape {dims} ({dtype})")
    return array.reshape(dims)


def parse_ckpt(data: bytes) -> tuple[dict[str, Any], list[str]]:
    """A .ckpt's bytes -> ({tag: ndarray or str}, notes). ValueError for damaged files."""
    notes: list[str] = []
    if data[-_CRC_TRAILER:-10] == _CRC_TAG:
        stored = int.from_bytes(data[-10:], "big")
        data = data[:-_CRC_TRAILER]
        actual = zlib.crc32(data)
        if actual != stored:
            raise UsageError(f"CRC mismatch: the trailer says {stored:#010x}, the content gives {actual:#010x}; "
                             "the file is damaged (copy it again)")
        notes.append(f"CRC32 trailer verified ({stored:#010x})")
    chunks: dict[str, list[memoryview]] = {}
    shapes: dict[str, tuple[list[int], str]] = {}
    previous = None
    maps = []
    for number, _, value in fields(memoryview(data)):
        if number != 1 or not isinstance(value, memoryview):
            raise ValueError("not a Checkpoint message")
        entry = {n: v for n, _, v in fields(value) if n in (1, 2, 3)}
        tag_view, tensor = entry.get(1), entry.get(2)
        if not isinstance(tag_view, memoryview):
            raise ValueError("a Value without a tag")
        tag = bytes(tag_view).decode("utf-8")
        if not isinstance(tensor, memoryview):
            maps.append(tag)  # a MapTensor (embedding tables): nothing a RetinaNet holds
            continue
        dims, dtype, content = _tensor_proto(tensor)
        if tag in chunks and tag != previous:
            raise ValueError(f"{tag} appears twice, not in consecutive chunks")
        if tag in chunks and shapes[tag] != (dims, dtype):
            raise ValueError(f"{tag}: chunks disagree on shape or dtype")
        chunks.setdefault(tag, []).append(content)
        shapes[tag] = (dims, dtype)
        previous = tag
    tensors = {tag: _to_array(tag, *shapes[tag], b"".join(parts)) for tag, parts in chunks.items()}
    split = sum(1 for parts in chunks.values() if len(parts) > 1)
    if split:
        notes.append(f"{split} tensors were stored in chunks and joined")
    if maps:
        notes.append(f"skipped {len(maps)} map tensors: {', '.join(maps[:3])}")
    return tensors, notes


def read_ckpt(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Read a MindSpore .ckpt: ({name: ndarray or str}, notes). UsageError (one line) for encrypted,
    CRC-mismatched, truncated or corrupt files."""
    p = Path(path)
    data = p.read_bytes()
    mode = cipher_mode(data[:4])
    if mode is not None:
        raise UsageError(f"{p} is an encrypted MindSpore checkpoint ({mode}, saved with enc_key); only MindSpore "
                         "with the key can read it: load it with mindspore.load_checkpoint(..., dec_key=KEY, "
                         "dec_mode=...) and save it again without enc_key")
    try:
        tensors, notes = parse_ckpt(data)
    except UsageError as exc:
        raise UsageError(f"{p}: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p} is truncated or not a MindSpore checkpoint (protobuf scan: {exc})") from None
    if not tensors:
        raise UsageError(f"{p} is not a checkpoint: no tensors found")
    return tensors, [f"MindSpore .ckpt (protobuf), {len(tensors)} entries", *notes]


def looks_like_safetensors(head: bytes) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then the JSON header."""
    return len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100 * 2**20


def read_safetensors(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """({name: ndarray}, notes) from a .safetensors file (MindSpore >= 2.4 writes metadata format "ms")."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        text = str(exc).strip().splitlines()
        raise UsageError(f"{p} is truncated or not a safetensors file ({text[0][:160] if text else type(exc).__name__})") from None
    origin = {"ms": "MindSpore", "pt": "PyTorch"}.get(meta.get("format", ""), meta.get("format", "unknown"))
    return tensors, [f"safetensors file ({origin} format), {len(tensors)} tensors"]
