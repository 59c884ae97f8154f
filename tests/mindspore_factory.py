"""MindSpore RetinaNet checkpoints built the way MindSpore saves them, from the facts sheet
(../shared/facts/mindspore-caffe.md A2, B) and independently of the importer.

- `mindspore_keys`: the 323 names and shapes of official/cv/RetinaNet (R50) or the research R101
  (FPN nested as network.fpn.*), with optimizer entries for a training checkpoint;
- `save_ckpt`: one serialized Checkpoint message per parameter, built with protobuf's own message
  classes (a descriptor of mindspore/ccsrc/utils/checkpoint.proto), large tensors split into
  consecutive same-tag chunks, optionally the crc_check trailer; `save_safetensors`: format="safetensors".
"""

from __future__ import annotations

import binascii
import math
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

KeySpec = dict[str, tuple[str, tuple[int, ...]]]
STAGES = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
WIDTHS = [64, 128, 256, 512]
_BN = ("gamma", "beta", "moving_mean", "moving_variance")
_BN_ROLE = {"gamma": "bn_weight", "beta": "bn_bias", "moving_mean": "bn_running_mean", "moving_variance": "bn_running_var"}
_MS_DTYPE = {np.dtype(np.float32): "Float32", np.dtype(np.float16): "Float16", np.dtype(np.int32): "Int32",
             np.dtype(np.int64): "Int64"}


def mindspore_keys(depth: int = 50, optimizer: bool = False) -> KeySpec:
    """name -> (role, shape) in the Cell tree's order; R101 and R152 nest backbone and FPN under network.fpn."""
    keys: KeySpec = {}
    root = "network.fpn." if depth in (101, 152) else "network."

    def conv(name: str, o: int, i: int, k: int, role: str = "conv") -> None:
        keys[f"{name}.weight"] = (role, (o, i, k, k))

    def bn(name: str, c: int) -> None:
        for p in _BN:
            keys[f"{name}.{p}"] = (_BN_ROLE[p], (c,))

    b = f"{root}backbone"
    conv(f"{b}.conv1.features.0", 64, 3, 7)
    bn(f"{b}.conv1.features.1", 64)
    in_ch = 64
    for stage, (blocks, width) in enumerate(zip(STAGES[depth], WIDTHS), start=1):
        for i in range(blocks):
            p = f"{b}.layer{stage}.{i}"
            conv(f"{p}.conv1.features.0", width, in_ch, 1)
            bn(f"{p}.conv1.features.1", width)
            conv(f"{p}.conv2.features.0", width, width, 3)
            bn(f"{p}.conv2.features.1", width)
            conv(f"{p}.conv3.conv", 4 * width, width, 1)
            bn(f"{p}.conv3.batchnorm", 4 * width)
            if i == 0:  # stride != 1 or in != out: every first block, layer1's too (64 != 256)
                conv(f"{p}.down_sample_layer.conv", 4 * width, in_ch, 1)
                bn(f"{p}.down_sample_layer.batchnorm", 4 * width)
            in_ch = 4 * width
    for lv, c in ((5, 2048), (4, 1024), (3, 512)):
        conv(f"{root}P{lv}_1", 256, c, 1, "fpn")
        conv(f"{root}P{lv}_2", 256, 256, 3, "fpn")
    conv(f"{root}P6_0", 256, 2048, 3, "fpn")
    conv(f"{root}P7_2", 256, 256, 3, "fpn")
    for head, n_out, role in (("loc", 36, "ms_box_pred"), ("cls", 9 * 81, "ms_cls_pred")):
        for level in range(5):
            for n in range(4):
                conv(f"network.multi_box.multi_{head}_layers.{level}.{2 * n}", 256, 256, 3, "tower")
            conv(f"network.multi_box.multi_{head}_layers.{level}.8", n_out, 256, 3, role)
    if optimizer:  # Momentum's moments for every learned weight, then the counters
        for name, (role, shape) in list(keys.items()):
            if not role.startswith("bn_"):
                keys[f"moments.{name}"] = ("moment", shape)
        keys["learning_rate"] = ("lr", ())
        keys["global_step"] = ("step", (1,))
    return keys


def random_values(keys: KeySpec, seed: int) -> dict[str, np.ndarray]:
    """Values that keep activations of order 1 through the ReLU-before-add blocks; the class
    predictor has no bias, so its weights lean negative to put a few percent of logits over 0.1."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, (role, shape) in keys.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if role in ("conv", "fpn"):
            v = rng.standard_normal(shape) * math.sqrt(1.0 / fan_in)
        elif role == "tower":
            v = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        elif role == "ms_cls_pred":
            v = (rng.standard_normal(shape) - 0.06) * math.sqrt(1.0 / fan_in)
        elif role == "ms_box_pred":
            v = rng.standard_normal(shape) * math.sqrt(0.3 / fan_in)
        elif role == "bn_weight":
            v = 0.5 + 0.5 * rng.random(shape)
        elif role in ("bn_bias", "bn_running_mean"):
            v = 0.1 * rng.standard_normal(shape)
        elif role == "bn_running_var":
            v = 0.5 + rng.random(shape)
        elif role == "moment":
            v = 1e-3 * rng.standard_normal(shape)
        elif role == "lr":
            v = np.array(0.01)
        elif role == "step":
            out[name] = np.array([90000], dtype=np.int32)
            continue
        else:
            raise ValueError(role)
        out[name] = np.asarray(v, dtype=np.float32)
    return out


def _checkpoint_class() -> Any:
    """The Checkpoint message class of checkpoint.proto (proto2), built from a descriptor."""
    f = descriptor_pb2.FileDescriptorProto(name="test_checkpoint.proto", package="mindspore.irpb.test", syntax="proto2")
    L = T = descriptor_pb2.FieldDescriptorProto

    def msg(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        m = f.message_type.add(name=name)
        for fname, number, label, ftype, type_name in fields:
            field = m.field.add(name=fname, number=number, label=label, type=ftype)
            if type_name:
                field.type_name = type_name

    msg("TensorProto", [("dims", 1, L.LABEL_REPEATED, T.TYPE_INT64, ""),
                        ("tensor_type", 2, L.LABEL_REQUIRED, T.TYPE_STRING, ""),
                        ("tensor_content", 3, L.LABEL_REQUIRED, T.TYPE_BYTES, "")])
    msg("Value", [("tag", 1, L.LABEL_REQUIRED, T.TYPE_STRING, ""),
                  ("tensor", 2, L.LABEL_OPTIONAL, T.TYPE_MESSAGE, ".mindspore.irpb.test.TensorProto")])
    msg("Checkpoint", [("value", 1, L.LABEL_REPEATED, T.TYPE_MESSAGE, ".mindspore.irpb.test.Value")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("mindspore.irpb.test.Checkpoint"))


def ckpt_bytes(values: dict[str, np.ndarray], chunk_bytes: int = 512 * 1024 * 1024, crc: bool = False,
               strings: dict[str, str] | None = None) -> bytes:
    """What save_checkpoint writes: per parameter (and per chunk of chunk_bytes), one Checkpoint with
    one Value; "str" entries with dims [0]; with crc, b"crc_num" + crc32 as 10 big-endian bytes."""
    checkpoint = _checkpoint_class()
    parts = []
    items: list[tuple[str, tuple[int, ...], str, bytes]] = [
        (k, v.shape, _MS_DTYPE[v.dtype], np.ascontiguousarray(v).tobytes()) for k, v in values.items()]
    items += [(k, (0,), "str", s.encode()) for k, s in (strings or {}).items()]
    for tag, shape, dtype, raw in items:
        for start in range(0, max(len(raw), 1), chunk_bytes):
            msg = checkpoint()
            value = msg.value.add(tag=tag)
            value.tensor.dims.extend(shape)
            value.tensor.tensor_type = dtype
            value.tensor.tensor_content = raw[start : start + chunk_bytes]
            parts.append(msg.SerializeToString())
    data = b"".join(parts)
    if crc:
        data += b"crc_num" + binascii.crc32(data, 0).to_bytes(10, byteorder="big")
    return data


def save_ckpt(values: dict[str, np.ndarray], path: Path, **kwargs: Any) -> Path:
    path.write_bytes(ckpt_bytes(values, **kwargs))
    return path


def save_safetensors(values: dict[str, np.ndarray], path: Path) -> Path:
    """MindSpore >= 2.4 save_checkpoint(format="safetensors"): the same names, metadata format "ms"."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in values.items()}, str(path), metadata={"format": "ms"})
    return path
