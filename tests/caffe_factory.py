"""Caffe ports of maskrcnn-benchmark RetinaNets as pycaffe's NetSpec writes them, built from the facts
sheet (../shared/facts/mindspore-caffe.md C) independently of the importer: the .prototxt as text
and the .caffemodel as protobuf wire bytes written here (NetParameter.layer = 100 / V1 layers = 2).

Names are maskrcnn-benchmark's module names with '.' -> '_'; ReLU, Scale and BatchNorm run in
place; the FPN upsamples with a Deconvolution (group C, k4 s2 p1, bilinear filler); the head runs
once per level as layers suffixed _p<level>.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class Enum(str):
    """A prototxt enum value (written without quotes)."""


@dataclass
class CaffeLayer:
    name: str
    type: str
    bottom: list[str]
    top: list[str]
    params: dict[str, Any] = field(default_factory=dict)  # e.g. {"convolution_param": {...}}
    blobs: list[np.ndarray] = field(default_factory=list)


@dataclass
class PortOptions:
    depth: int = 50
    stem: int = 64
    width: int = 64
    fpn: int = 256
    classes: int = 80
    norm: str = "scale"  # "scale" (FrozenBN as Scale + bias), "bn_scale" (BatchNorm + Scale), "bias" (conv bias only)
    stride_in_1x1: bool = True
    stem_pad: int = 0  # stem pool k3 s2 p<stem_pad>
    stem_ceil: bool = True  # Caffe's default round_mode CEIL, else FLOOR
    shared_head: bool = True
    v1: bool = False  # legacy V1 layers (no Input, BatchNorm or Scale layers exist there)
    input_hw: tuple[int, int] = (64, 64)


BILINEAR_TAPS = np.array([0.25, 0.75, 0.75, 0.25])  # filler.hpp's bilinear weights for k = 4


def build_port(opts: PortOptions, seed: int) -> list[CaffeLayer]:
    """The layer list of a RetinaNet port with random, well-scaled weights."""
    rng = np.random.default_rng(seed)
    layers: list[CaffeLayer] = []

    def conv(name: str, bottom: str, out: int, cin: int, k: int, s: int = 1, bias: bool = False,
             gain: float = 1.0, top: str | None = None) -> str:
        w = rng.standard_normal((out, cin, k, k)) * np.sqrt(gain / (cin * k * k))
        blobs = [w.astype(np.float32)] + ([(0.1 * rng.standard_normal(out)).astype(np.float32)] if bias else [])
        p: dict[str, Any] = {"num_output": out, "kernel_size": k, "pad": k // 2, "stride": s}
        if not bias:
            p["bias_term"] = False
        p["weight_filler"] = {"type": "msra"}
        layers.append(CaffeLayer(name, "Convolution", [bottom], [top or name], {"convolution_param": p}, blobs))
        return top or name

    def norm(conv_top: str, name: str, c: int) -> None:
        if opts.norm == "bn_scale":
            stats_factor = 0.5 + rng.random()
            mean, var = 0.1 * rng.standard_normal(c), 0.5 + rng.random(c)
            layers.append(CaffeLayer(name, "BatchNorm", [conv_top], [conv_top], {"batch_norm_param": {"use_global_stats": True}},
                                     [(mean * stats_factor).astype(np.float32), (var * stats_factor).astype(np.float32),
                                      np.array([stats_factor], np.float32)]))
            name += "_scale"
        if opts.norm in ("scale", "bn_scale"):
            gamma, beta = 0.5 + 0.5 * rng.random(c), 0.1 * rng.standard_normal(c)
            layers.append(CaffeLayer(name, "Scale", [conv_top], [conv_top], {"scale_param": {"bias_term": True}},
                                     [gamma.astype(np.float32).reshape(1, 1, 1, c), beta.astype(np.float32)]))

    def relu(blob: str, name: str, top: str | None = None) -> str:
        layers.append(CaffeLayer(name, "ReLU", [blob], [top or blob]))
        return top or blob

    def conv_norm(name: str, norm_name: str, bottom: str, out: int, cin: int, k: int, s: int = 1) -> str:
        top = conv(name, bottom, out, cin, k, s, bias=opts.norm == "bias")
        norm(top, norm_name, out)
        return top

    if not opts.v1:
        layers.append(CaffeLayer("data", "Input", [], ["data"],
                                 {"input_param": {"shape": {"dim": [1, 3, *opts.input_hw]}}}))
    t = conv_norm("backbone_body_stem_conv1", "backbone_body_stem_bn1", "data", opts.stem, 3, 7, 2)
    t = relu(t, "backbone_body_stem_relu")
    layers.append(CaffeLayer("backbone_body_stem_pool", "Pooling", [t], ["pool1"],
                             {"pooling_param": {"pool": Enum("MAX"), "kernel_size": 3, "stride": 2, "pad": opts.stem_pad,
                                                **({} if opts.stem_ceil else {"round_mode": Enum("FLOOR")})}}))
    t, cin = "pool1", opts.stem
    bottleneck = opts.depth >= 50
    stages = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3]}[opts.depth]
    feats = []
    for stage, n in enumerate(stages, start=1):
        width = opts.width * 2 ** (stage - 1)
        out_ch = width * (4 if bottleneck else 1)
        for i in range(n):
            p = f"backbone_body_layer{stage}_{i}"
            stride = 2 if i == 0 and stage > 1 else 1
            if bottleneck:
                s1, s2 = (stride, 1) if opts.stride_in_1x1 else (1, stride)
                x = relu(conv_norm(f"{p}_conv1", f"{p}_bn1", t, width, cin, 1, s1), f"{p}_relu1")
                x = relu(conv_norm(f"{p}_conv2", f"{p}_bn2", x, width, width, 3, s2), f"{p}_relu2")
                x = conv_norm(f"{p}_conv3", f"{p}_bn3", x, out_ch, width, 1)
            else:
                x = relu(conv_norm(f"{p}_conv1", f"{p}_bn1", t, width, cin, 3, stride), f"{p}_relu1")
                x = conv_norm(f"{p}_conv2", f"{p}_bn2", x, out_ch, width, 3)
            identity = t
            if i == 0 and (stride != 1 or cin != out_ch):
                identity = conv_norm(f"{p}_downsample_0", f"{p}_downsample_1", t, out_ch, cin, 1, stride)
            layers.append(CaffeLayer(f"{p}_sum", "Eltwise", [x, identity], [f"{p}_sum"]))
            t, cin = relu(f"{p}_sum", f"{p}_relu"), out_ch
        feats.append((t, cin))
    (c3, ch3), (c4, ch4), (c5, ch5) = feats[1:]
    f = opts.fpn

    def upsample(bottom: str, name: str) -> str:
        w = np.broadcast_to(np.outer(BILINEAR_TAPS, BILINEAR_TAPS), (f, 1, 4, 4)).astype(np.float32)
        layers.append(CaffeLayer(name, "Deconvolution", [bottom], [name], {
            "param": {"lr_mult": 0, "decay_mult": 0},
            "convolution_param": {"num_output": f, "group": f, "kernel_size": 4, "stride": 2, "pad": 1,
                                  "bias_term": False, "weight_filler": {"type": "bilinear"}}}, [w.copy()]))
        return name

    inner5 = conv("backbone_fpn_fpn_inner4", c5, f, ch5, 1, bias=True)
    lat4 = conv("backbone_fpn_fpn_inner3", c4, f, ch4, 1, bias=True)
    layers.append(CaffeLayer("backbone_fpn_sum4", "Eltwise", [lat4, upsample(inner5, "backbone_fpn_up4")],
                             ["inner4"], {"eltwise_param": {"operation": Enum("SUM")}}))
    lat3 = conv("backbone_fpn_fpn_inner2", c3, f, ch3, 1, bias=True)
    layers.append(CaffeLayer("backbone_fpn_sum3", "Eltwise", [lat3, upsample("inner4", "backbone_fpn_up3")], ["inner3"]))
    outs = [conv(f"backbone_fpn_fpn_layer{i}", inner, f, f, 3, bias=True)
            for i, inner in ((2, "inner3"), (3, "inner4"), (4, inner5))]
    p6 = conv("backbone_fpn_top_blocks_p6", c5, f, ch5, 3, 2, bias=True)
    p7 = conv("backbone_fpn_top_blocks_p7", relu(p6, "backbone_fpn_p6_relu", "p6_relu"), f, f, 3, 2, bias=True)
    head_rng_state = rng.bit_generator.state
    for level, feature in zip(range(3, 8), [*outs, p6, p7], strict=True):
        if opts.shared_head:  # the same weights at every level (Caffe shares them with param { name })
            rng.bit_generator.state = head_rng_state
        for tower, pred, n_out in (("cls_tower", "cls_logits", 9 * opts.classes), ("bbox_tower", "bbox_pred", 36)):
            h = feature
            for n in range(4):
                h = relu(conv(f"rpn_head_{tower}_{2 * n}_p{level}", h, f, f, 3, bias=True, gain=2.0),
                         f"rpn_head_{tower}_{2 * n}_relu_p{level}")
            conv(f"rpn_head_{pred}_p{level}", h, n_out, f, 3, bias=True, gain=3.0 if pred == "cls_logits" else 0.2)
    return layers


# ---------------------------------------------------------------- text and wire formats


def _text(params: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                lines += [f"{indent}{key} {{", *_text(item, indent + "  "), f"{indent}}}"]
            elif isinstance(item, Enum):
                lines.append(f"{indent}{key}: {item}")
            elif isinstance(item, bool):
                lines.append(f"{indent}{key}: {'true' if item else 'false'}")
            elif isinstance(item, str):
                lines.append(f'{indent}{key}: "{item}"')
            else:
                lines.append(f"{indent}{key}: {item}")
    return lines


_V1 = {"Convolution": "CONVOLUTION", "Deconvolution": "DECONVOLUTION", "Pooling": "POOLING", "ReLU": "RELU",
       "Eltwise": "ELTWISE", "Upsample": "UPSAMPLE"}
_V1_PARAMS = {"convolution_param", "pooling_param", "eltwise_param", "relu_param"}


def prototxt(layers: list[CaffeLayer], opts: PortOptions, name: str = "retinanet") -> str:
    lines = [f'name: "{name}"']
    if opts.v1:  # V1 nets declare their input at the net level
        lines += ['input: "data"'] + [f"input_dim: {d}" for d in (1, 3, *opts.input_hw)]
    for layer in layers:
        body: dict[str, Any] = {"name": layer.name}
        if opts.v1:
            body["type"] = Enum(_V1[layer.type])
        else:
            body["type"] = layer.type
        body["bottom"], body["top"] = layer.bottom, layer.top
        params = {k: v for k, v in layer.params.items() if not opts.v1 or k in _V1_PARAMS}
        body.update(params)
        lines += [f"{'layers' if opts.v1 else 'layer'} {{", *_text(body, "  "), "}"]
    return "\n".join(lines) + "\n"


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(array: np.ndarray, legacy: bool, double: bool) -> bytes:
    if legacy:  # Caffe before BlobShape: num, channels, height, width (4-D, padded with 1s in front)
        dims = [1] * (4 - array.ndim) + list(array.shape)
        head = b"".join(_varint(n << 3) + _varint(d) for n, d in zip((1, 2, 3, 4), dims))
    else:
        head = _field(7, _field(1, b"".join(_varint(d) for d in array.shape)))
    data = _field(8, array.astype("<f8").tobytes()) if double else _field(5, array.astype("<f4").tobytes())
    return head + data


def caffemodel(layers: list[CaffeLayer], opts: PortOptions, legacy_every: int = 0, double_every: int = 0) -> bytes:
    """A trained net's binary: every layer with its name, type and blobs (every legacy_every-th blob in the
    legacy 4-D form, every double_every-th as double_data)."""
    out = [_field(1, b"retinanet")]
    count = 0
    for layer in layers:
        if opts.v1:
            body = _field(4, layer.name.encode()) + _varint(5 << 3) + _varint({"CONVOLUTION": 4, "DECONVOLUTION": 39,
                   "POOLING": 17, "RELU": 18, "ELTWISE": 25}[_V1[layer.type]])
        else:
            body = _field(1, layer.name.encode()) + _field(2, layer.type.encode())
        for b in layer.bottom:
            body += _field(2 if opts.v1 else 3, b.encode())
        for t in layer.top:
            body += _field(3 if opts.v1 else 4, t.encode())
        for blob in layer.blobs:
            count += 1
            body += _field(6 if opts.v1 else 7, _blob(blob, bool(legacy_every) and count % legacy_every == 0,
                                                      bool(double_every) and count % double_every == 0))
        out.append(_field(2 if opts.v1 else 100, body))
    return b"".join(out)


def save_port(layers: list[CaffeLayer], opts: PortOptions, folder: Path, stem: str = "retinanet",
              **blob_forms: int) -> tuple[Path, Path]:
    """(caffemodel, prototxt) written side by side with the same stem."""
    proto = folder / f"{stem}.prototxt"
    proto.write_text(prototxt(layers, opts))
    model = folder / f"{stem}.caffemodel"
    model.write_bytes(caffemodel(layers, opts, **blob_forms))
    return model, proto
