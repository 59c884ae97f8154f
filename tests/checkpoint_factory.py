"""Synthesise checkpoints with exactly the key names and shapes of each framework's R50 RetinaNet
(../shared/facts/checkpoint-formats.md sections 1a, 1b, 2a, 3a, 4a, 5a), random but well-scaled values, in
each framework's file format. Written from the facts sheet, independently of the importers.
"""

from __future__ import annotations

import math
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# (role, shape): roles decide the random values.
KeySpec = dict[str, tuple[str, tuple[int, ...]]]

R50_STAGES = [(3, 64), (4, 128), (6, 256), (3, 512)]  # (blocks, width); out = 4 * width
FRAMEWORKS = ["torchvision_v1", "torchvision_v2", "detectron2", "maskrcnn_benchmark", "yhenon", "detectron"]
# Box-coder weight of dw per framework: the synthesised dw bias of anchor 0 is 5 / weight in
# delta units, exp(5) > 1000/16, so the clamp (where there is one) is exercised.
DW_WEIGHT = {"torchvision_v1": 1.0, "torchvision_v2": 1.0, "detectron2": 1.0, "maskrcnn_benchmark": 5.0,
             "yhenon": 5.0, "detectron": 1.0}


def r50_blocks() -> Iterator[tuple[int, int, int, int, int, bool]]:
    """(stage 1..4, block, in_ch, width, out_ch, has_shortcut_conv) for ResNet-50."""
    in_ch = 64
    for stage, (n, width) in enumerate(R50_STAGES, start=1):
        for i in range(n):
            yield stage, i, in_ch, width, 4 * width, i == 0
            in_ch = 4 * width


class _Keys:
    """Collects name -> (role, shape) in insertion order."""

    def __init__(self) -> None:
        self.keys: KeySpec = {}

    def conv(self, name: str, o: int, i: int, k: int, bias: bool = False, role: str = "conv",
             w: str = ".weight", b: str = ".bias") -> None:
        self.keys[name + w] = (role, (o, i, k, k))
        if bias:
            self.keys[name + b] = (f"{role}_bias" if role.endswith("_pred") else "bias", (o,))

    def bn(self, name: str, c: int, tracked: bool = False) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            self.keys[f"{name}.{p}"] = (f"bn_{p}", (c,))
        if tracked:
            self.keys[f"{name}.num_batches_tracked"] = ("count", ())


def torchvision_keys(v2: bool, legacy: bool) -> KeySpec:
    """retinanet_resnet50_fpn (v1, legacy or current layout) or _v2 (always current layout)."""
    k = _Keys()
    k.conv("backbone.body.conv1", 64, 3, 7)
    k.bn("backbone.body.bn1", 64, tracked=v2)
    for s, i, cin, w, cout, ds in r50_blocks():
        p = f"backbone.body.layer{s}.{i}"
        for n, (o, ci, ks) in enumerate([(w, cin, 1), (w, w, 3), (cout, w, 1)], start=1):
            k.conv(f"{p}.conv{n}", o, ci, ks)
            k.bn(f"{p}.bn{n}", o, tracked=v2)
        if ds:
            k.conv(f"{p}.downsample.0", cout, cin, 1)
            k.bn(f"{p}.downsample.1", cout, tracked=v2)
    sub = "" if legacy else ".0"
    for i, c in enumerate((512, 1024, 2048)):
        k.conv(f"backbone.fpn.inner_blocks.{i}{sub}", 256, c, 1, bias=True)
        k.conv(f"backbone.fpn.layer_blocks.{i}{sub}", 256, 256, 3, bias=True)
    k.conv("backbone.fpn.extra_blocks.p6", 256, 2048 if v2 else 256, 3, bias=True)
    k.conv("backbone.fpn.extra_blocks.p7", 256, 256, 3, bias=True)
    for head, pred, n_out, role in (("classification_head", "cls_logits", 9 * 91, "cls_pred"),
                                    ("regression_head", "bbox_reg", 36, "box_pred")):
        for n in range(4):
            if v2:
                k.conv(f"head.{head}.conv.{n}.0", 256, 256, 3, role="tower")
                k.keys[f"head.{head}.conv.{n}.1.weight"] = ("gn_weight", (256,))
                k.keys[f"head.{head}.conv.{n}.1.bias"] = ("gn_bias", (256,))
            else:
                k.conv(f"head.{head}.conv.{2 * n if legacy else f'{n}.0'}", 256, 256, 3, bias=True, role="tower")
        k.conv(f"head.{head}.{pred}", n_out, 256, 3, bias=True, role=role)
    return k.keys


def detectron2_keys() -> KeySpec:
    k = _Keys()
    k.conv("backbone.bottom_up.stem.conv1", 64, 3, 7)
    k.bn("backbone.bottom_up.stem.conv1.norm", 64)
    for s, i, cin, w, cout, ds in r50_blocks():
        p = f"backbone.bottom_up.res{s + 1}.{i}"
        for n, (o, ci, ks) in enumerate([(w, cin, 1), (w, w, 3), (cout, w, 1)], start=1):
            k.conv(f"{p}.conv{n}", o, ci, ks)
            k.bn(f"{p}.conv{n}.norm", o)
        if ds:
            k.conv(f"{p}.shortcut", cout, cin, 1)
            k.bn(f"{p}.shortcut.norm", cout)
    for lv, c in zip((3, 4, 5), (512, 1024, 2048), strict=True):
        k.conv(f"backbone.fpn_lateral{lv}", 256, c, 1, bias=True)
        k.conv(f"backbone.fpn_output{lv}", 256, 256, 3, bias=True)
    k.conv("backbone.top_block.p6", 256, 2048, 3, bias=True)
    k.conv("backbone.top_block.p7", 256, 256, 3, bias=True)
    for sub in ("cls_subnet", "bbox_subnet"):
        for n in range(4):
            k.conv(f"head.{sub}.{2 * n}", 256, 256, 3, bias=True, role="tower")
    k.conv("head.cls_score", 720, 256, 3, bias=True, role="cls_pred")
    k.conv("head.bbox_pred", 36, 256, 3, bias=True, role="box_pred")
    return k.keys


def maskrcnn_benchmark_keys(p6_from_p5: bool = False, channels: int = 256, num_classes: int = 80) -> KeySpec:
    """channels: FPN and head width (1024 in the seed's text detector); num_classes: 80 COCO or e.g. 1."""
    k = _Keys()
    k.conv("backbone.body.stem.conv1", 64, 3, 7)
    k.bn("backbone.body.stem.bn1", 64)
    for s, i, cin, w, cout, ds in r50_blocks():
        p = f"backbone.body.layer{s}.{i}"
        for n, (o, ci, ks) in enumerate([(w, cin, 1), (w, w, 3), (cout, w, 1)], start=1):
            k.conv(f"{p}.conv{n}", o, ci, ks)
            k.bn(f"{p}.bn{n}", o)
        if ds:
            k.conv(f"{p}.downsample.0", cout, cin, 1)
            k.bn(f"{p}.downsample.1", cout)
    for idx, c in zip((2, 3, 4), (512, 1024, 2048), strict=True):
        k.conv(f"backbone.fpn.fpn_inner{idx}", channels, c, 1, bias=True)
        k.conv(f"backbone.fpn.fpn_layer{idx}", channels, channels, 3, bias=True)
    k.conv("backbone.fpn.top_blocks.p6", channels, channels if p6_from_p5 else 2048, 3, bias=True)
    k.conv("backbone.fpn.top_blocks.p7", channels, channels, 3, bias=True)
    for lv in range(5):
        k.keys[f"rpn.anchor_generator.cell_anchors.{lv}"] = ("anchors", (9, 4))
    for tower in ("cls_tower", "bbox_tower"):
        for n in range(4):
            k.conv(f"rpn.head.{tower}.{2 * n}", channels, channels, 3, bias=True, role="tower")
    k.conv("rpn.head.cls_logits", 9 * num_classes, channels, 3, bias=True, role="cls_pred")
    k.conv("rpn.head.bbox_pred", 36, channels, 3, bias=True, role="box_pred")
    return k.keys


def yhenon_keys() -> KeySpec:
    k = _Keys()
    k.conv("conv1", 64, 3, 7)
    k.bn("bn1", 64, tracked=True)
    for s, i, cin, w, cout, ds in r50_blocks():
        p = f"layer{s}.{i}"
        for n, (o, ci, ks) in enumerate([(w, cin, 1), (w, w, 3), (cout, w, 1)], start=1):
            k.conv(f"{p}.conv{n}", o, ci, ks)
            k.bn(f"{p}.bn{n}", o, tracked=True)
        if ds:
            k.conv(f"{p}.downsample.0", cout, cin, 1)
            k.bn(f"{p}.downsample.1", cout, tracked=True)
    for lv, c in ((5, 2048), (4, 1024), (3, 512)):
        k.conv(f"fpn.P{lv}_1", 256, c, 1, bias=True)
        k.conv(f"fpn.P{lv}_2", 256, 256, 3, bias=True)
    k.conv("fpn.P6", 256, 2048, 3, bias=True)
    k.conv("fpn.P7_2", 256, 256, 3, bias=True)
    for model, n_out, role in (("regressionModel", 36, "box_pred"), ("classificationModel", 720, "cls_pred")):
        for n in range(1, 5):
            k.conv(f"{model}.conv{n}", 256, 256, 3, bias=True, role="tower")
        k.conv(f"{model}.output", n_out, 256, 3, bias=True, role=role)
    return k.keys


def detectron_keys(momentum: bool = True) -> KeySpec:
    """Detectron blobs: conv weights `_w`, biases `_b`, AffineChannel `_bn_s`/`_bn_b`, plus momenta."""
    k = _Keys()

    def affine(name: str, c: int) -> None:
        k.keys[f"{name}_bn_s"] = ("affine_s", (c,))
        k.keys[f"{name}_bn_b"] = ("affine_b", (c,))

    k.conv("conv1", 64, 3, 7, w="_w")
    affine("res_conv1", 64)
    for s, i, cin, w, cout, ds in r50_blocks():
        p = f"res{s + 1}_{i}"
        for br, (o, ci, ks) in zip("abc", [(w, cin, 1), (w, w, 3), (cout, w, 1)], strict=True):
            k.conv(f"{p}_branch2{br}", o, ci, ks, w="_w")
            affine(f"{p}_branch2{br}", o)
        if ds:
            k.conv(f"{p}_branch1", cout, cin, 1, w="_w")
            affine(f"{p}_branch1", cout)
    for name, c in (("fpn_inner_res5_2_sum", 2048), ("fpn_inner_res4_5_sum_lateral", 1024),
                    ("fpn_inner_res3_3_sum_lateral", 512)):
        k.conv(name, 256, c, 1, bias=True, w="_w", b="_b")
    for name in ("fpn_res5_2_sum", "fpn_res4_5_sum", "fpn_res3_3_sum"):
        k.conv(name, 256, 256, 3, bias=True, w="_w", b="_b")
    k.conv("fpn_6", 256, 2048, 3, bias=True, w="_w", b="_b")
    k.conv("fpn_7", 256, 256, 3, bias=True, w="_w", b="_b")
    for head in ("cls", "bbox"):
        for n in range(4):
            k.conv(f"retnet_{head}_conv_n{n}_fpn3", 256, 256, 3, bias=True, role="tower", w="_w", b="_b")
    k.conv("retnet_cls_pred_fpn3", 720, 256, 3, bias=True, role="cls_pred", w="_w", b="_b")
    k.conv("retnet_bbox_pred_fpn3", 36, 256, 3, bias=True, role="box_pred", w="_w", b="_b")
    if momentum:  # trainable params have a momentum blob; AffineChannel params are frozen
        for name, (_role, shape) in list(k.keys.items()):
            if name.endswith(("_w", "_b")) and "_bn_" not in name:
                k.keys[f"{name}_momentum"] = ("momentum", shape)
    return k.keys


def key_spec(framework: str, **variant: Any) -> KeySpec:
    if framework.startswith("torchvision"):
        return torchvision_keys(v2=framework == "torchvision_v2", legacy=variant.get("legacy", framework == "torchvision_v1"))
    if framework == "maskrcnn_benchmark":
        return maskrcnn_benchmark_keys(**variant)
    return {"detectron2": detectron2_keys, "yhenon": yhenon_keys, "detectron": detectron_keys}[framework]()


def random_values(keys: KeySpec, seed: int, dw_weight: float = 1.0) -> dict[str, np.ndarray]:
    """Values that keep a random R50 RetinaNet's activations of order 1 and put a few percent of
    the class scores above 0.05 (so thresholds, top-k and NMS all have work)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, (role, shape) in keys.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if role == "conv":
            v = rng.standard_normal(shape) * math.sqrt(1.0 / fan_in)
        elif role == "tower":
            v = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        elif role == "cls_pred":
            v = rng.standard_normal(shape) * math.sqrt(3.0 / fan_in)
        elif role == "box_pred":
            v = rng.standard_normal(shape) * math.sqrt(0.2 / fan_in)
        elif role == "bias":
            v = 0.1 * rng.standard_normal(shape)
        elif role == "cls_pred_bias":
            v = -math.log(99.0) + rng.standard_normal(shape)
        elif role == "box_pred_bias":
            v = 0.1 * rng.standard_normal(shape)
            v[2] = 5.0 * dw_weight  # dw of anchor 0: a huge box, clamped where the framework clamps
        elif role in ("bn_weight", "gn_weight", "affine_s"):
            v = 0.5 + 0.5 * rng.random(shape)
        elif role in ("bn_bias", "gn_bias", "affine_b", "bn_running_mean"):
            v = 0.1 * rng.standard_normal(shape)
        elif role == "bn_running_var":
            v = 0.5 + rng.random(shape)
        elif role == "count":
            out[name] = np.array(1000, dtype=np.int64)
            continue
        elif role == "anchors":
            v = 100.0 * rng.standard_normal(shape)
        elif role == "momentum":
            v = 1e-3 * rng.standard_normal(shape)
        else:
            raise ValueError(role)
        out[name] = np.asarray(v, dtype=np.float32)
    return out


def synthesise(framework: str, seed: int = 0, **variant: Any) -> dict[str, np.ndarray]:
    """name -> float32 array (int64 for BN step counters) for a framework's R50 RetinaNet."""
    return random_values(key_spec(framework, **variant), seed, DW_WEIGHT[framework])


def count_learned(keys: KeySpec) -> int:
    """Parameters the framework itself counts: conv/GN weights and biases (no BN buffers, anchors, momenta)."""
    learned = {"conv", "tower", "cls_pred", "box_pred", "bias", "cls_pred_bias", "box_pred_bias",
               "gn_weight", "gn_bias"}
    return sum(int(np.prod(shape)) for role, shape in keys.values() if role in learned)


# ---------------------------------------------------------------- file formats


def _tensors(values: dict[str, np.ndarray], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: torch.from_numpy(v.copy()) for k, v in values.items()}


def save(framework: str, values: dict[str, np.ndarray], path: Path, **fmt: Any) -> Path:
    """Write `values` the way the framework stores a checkpoint.

    torchvision / yhenon: plain state_dict .pth/.pt; detectron2: model-zoo .pkl ({"model": arrays})
    or trainer .pth (fmt pth=True); maskrcnn-benchmark: {"model", "optimizer", "scheduler",
    "iteration"} .pth, keys "module."-prefixed with fmt module=True; Detectron: Python 2 pickle of
    {"blobs", "cfg"}.
    """
    if framework.startswith("torchvision") or framework == "yhenon":
        torch.save(_tensors(values), path)
    elif framework == "detectron2" and not fmt.get("pth"):
        with open(path, "wb") as f:
            pickle.dump({"model": values, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f)
    elif framework == "detectron2":
        torch.save({"model": _tensors(values), "optimizer": {"state": {}, "param_groups": []},
                    "scheduler": {"base_lrs": [0.01], "last_epoch": 89999}, "iteration": 89999}, path)
    elif framework == "maskrcnn_benchmark":
        prefix = "module." if fmt.get("module") else ""
        torch.save({"model": _tensors(values, prefix), "optimizer": {"state": {}, "param_groups": []},
                    "scheduler": {"milestones": [60000, 80000], "gamma": 0.1, "warmup_method": "linear",
                                  "last_epoch": 90000, "base_lrs": [0.01]}, "iteration": 90000}, path)
    elif framework == "detectron":
        path.write_bytes(py2_pickle({"blobs": values, "cfg": "MODEL:\n  TYPE: retinanet\n  NUM_CLASSES: 81\n"}))
    else:
        raise ValueError(framework)
    return path


def py2_pickle(obj: Any) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle writes it for numpy 1.x: str as SHORT_BINSTRING /
    BINSTRING (Python 3 must read them with encoding="latin1"), arrays via
    numpy.core.multiarray._reconstruct with the raw bytes as a py2 str. Dicts, str, int, arrays only."""
    out = bytearray(b"\x80\x02")

    def pystr(s: bytes) -> None:
        out.extend(b"U" + bytes([len(s)]) + s if len(s) < 256 else b"T" + struct.pack("<I", len(s)) + s)

    def emit(o: Any) -> None:
        if isinstance(o, dict):
            out.extend(b"}(")  # EMPTY_DICT, MARK
            for key, value in o.items():
                emit(key)
                emit(value)
            out.extend(b"u")  # SETITEMS
        elif isinstance(o, str):
            pystr(o.encode("latin1"))
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, np.ndarray):
            arr = np.ascontiguousarray(o)
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n")
            out.extend(b"cnumpy\nndarray\n")
            out.extend(b"K\x00\x85")  # (0,)
            pystr(b"b")
            out.extend(b"\x87R")  # TUPLE3, REDUCE
            out.extend(b"(K\x01")  # MARK, 1
            out.extend(b"(" + b"".join(b"J" + struct.pack("<i", d) for d in arr.shape) + b"t")
            out.extend(b"cnumpy\ndtype\n")
            pystr(arr.dtype.str[1:].encode())  # e.g. "f4"
            out.extend(b"K\x00K\x01\x87R")  # dtype("f4", 0, 1)
            out.extend(b"(K\x03")
            pystr(b"<")
            out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")  # (3, '<', None*3, -1, -1, 0) BUILD
            out.extend(b"\x89")  # is_fortran False
            pystr(arr.tobytes())
            out.extend(b"tb")  # state tuple, BUILD
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)
