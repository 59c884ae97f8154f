"""Caffe ports of maskrcnn-benchmark RetinaNets, built from the facts sheet
(../shared/facts/mindspore-caffe.md C) independently of the importer: the .prototxt as text and the
.caffemodel as protobuf wire bytes written here (NetParameter.layer = 100 / V1 layers = 2).

build_port: names are maskrcnn-benchmark's module names with '.' -> '_'; ReLU, Scale and BatchNorm
run in place; the FPN upsamples with a Deconvolution (group C, k4 s2 p1, bilinear filler); the head
runs once per level as layers suffixed _p<level>.

seed_port: the seed's own port as its pycaffe NetSpec script writes it, through a NetSpec that
behaves as BVLC's python/caffe/net_spec.py does (names, layer order, in-place tops): the aliases
backbone_fpn_fpn_inner3_lateral, backbone_fpn_topblocks_p6 and rpn_head_cls_tower_p2_0, a DummyData
input, an in-place ReLU on P6 before the heads, and a Deconvolution without group. The script itself
is not in this repository; its statements follow issue 17's description of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
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
    head_reads_relu_p6: bool = False  # the P6 head reads the ReLU's own top (not in place), as P7 does


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
    for level, feature in zip(range(3, 8), [*outs, "p6_relu" if opts.head_reads_relu_p6 else p6, p7], strict=True):
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
       "Eltwise": "ELTWISE", "Upsample": "UPSAMPLE", "DummyData": "DUMMY_DATA"}
_V1_PARAMS = {"convolution_param", "pooling_param", "eltwise_param", "relu_param", "dummy_data_param"}


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


def _caffemodel_parts(layers: list[CaffeLayer], opts: PortOptions, legacy_every: int = 0,
                      double_every: int = 0) -> Iterator[bytes]:
    yield _field(1, b"retinanet")
    count = 0
    for layer in layers:
        if opts.v1:
            body = _field(4, layer.name.encode()) + _varint(5 << 3) + _varint({"CONVOLUTION": 4, "DECONVOLUTION": 39,
                   "POOLING": 17, "RELU": 18, "ELTWISE": 25, "DUMMY_DATA": 32}[_V1[layer.type]])
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
        yield _field(2 if opts.v1 else 100, body)


def caffemodel(layers: list[CaffeLayer], opts: PortOptions, legacy_every: int = 0, double_every: int = 0) -> bytes:
    """A trained net's binary: every layer with its name, type and blobs (every legacy_every-th blob in the
    legacy 4-D form, every double_every-th as double_data)."""
    return b"".join(_caffemodel_parts(layers, opts, legacy_every, double_every))


def save_port(layers: list[CaffeLayer], opts: PortOptions, folder: Path, stem: str = "retinanet",
              **blob_forms: int) -> tuple[Path, Path]:
    """(caffemodel, prototxt) written side by side with the same stem."""
    proto = folder / f"{stem}.prototxt"
    proto.write_text(prototxt(layers, opts))
    model = folder / f"{stem}.caffemodel"
    with model.open("wb") as f:  # a layer at a time: the 1024-channel port is 2 GB
        for part in _caffemodel_parts(layers, opts, **blob_forms):
            f.write(part)
    return model, proto


# ---------------------------------------------------------------- pycaffe's NetSpec, and the seed's port in it
#
# NetSpec (BVLC/caffe python/caffe/net_spec.py) as it behaves: a layer is named after the attribute
# its top is assigned to (else TypeN), its tops likewise; in_place=True makes its tops its bottoms;
# keyword arguments go into <type>_param unless they end in "param"; to_proto emits the layers in
# assignment order, each after the layers it reads (depth first). `blobs` is not a Caffe parameter:
# it carries the trained weights the caffemodel stores.

_PARAM_NAMES = {"Convolution": "convolution", "Pooling": "pooling", "Scale": "scale", "BatchNorm": "batch_norm",
                "ReLU": "relu", "Eltwise": "eltwise", "DummyData": "dummy_data", "Input": "input"}


class Top:
    def __init__(self, fn: Function, n: int) -> None:
        self.fn, self.n = fn, n


class Function:
    def __init__(self, type_name: str, inputs: tuple[Top, ...], params: dict[str, Any]) -> None:
        self.type_name, self.inputs = type_name, inputs
        self.blobs: list[np.ndarray] = params.pop("blobs", [])
        self.ntop = params.pop("ntop", 1)
        self.in_place = params.pop("in_place", False)
        self.params = params
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    @staticmethod
    def _top_name(top: Top, names: dict[Any, str], autonames: Counter[str]) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def emit(self, layers: dict[Function, CaffeLayer], names: dict[Any, str], autonames: Counter[str]) -> None:
        if self in layers:
            return
        bottoms = []
        for top in self.inputs:
            top.fn.emit(layers, names, autonames)
            bottoms.append(layers[top.fn].top[top.n])
        tops = list(bottoms) if self.in_place else [self._top_name(t, names, autonames) for t in self.tops]
        if self not in names:
            names[self] = self._top_name(self.tops[0], names, autonames)
        params: dict[str, Any] = {}
        for key, value in self.params.items():
            if key.endswith("param"):
                params[key] = value
            else:
                params.setdefault(f"{_PARAM_NAMES[self.type_name]}_param", {})[key] = value
        layers[self] = CaffeLayer(names[self], self.type_name, bottoms, tops, params, self.blobs)


class NetSpec:
    def __init__(self) -> None:
        object.__setattr__(self, "tops", {})

    def __setattr__(self, name: str, value: Top) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Top:
        return self.tops[name]

    __setitem__, __getitem__ = __setattr__, __getattr__

    def to_layers(self) -> list[CaffeLayer]:
        names: dict[Any, str] = {top: name for name, top in self.tops.items()}
        autonames: Counter[str] = Counter()
        layers: dict[Function, CaffeLayer] = {}
        for top in self.tops.values():
            top.fn.emit(layers, names, autonames)
        return list(layers.values())


class _Layers:
    def __getattr__(self, type_name: str) -> Any:
        def layer(*inputs: Top, **params: Any) -> Top:
            return Function(type_name, inputs, params).tops[0]
        return layer


L = _Layers()


@dataclass
class SeedOptions:
    """The seed's port: maskrcnn-benchmark's text detector (R-50, FPN and head at 1024, 1 class)."""

    fpn: int = 1024
    classes: int = 1
    shared_head: bool = True  # the port holds one copy of maskrcnn-benchmark's shared head per level
    deconv_group: int | None = None  # the seed writes no group: a full C x C kernel
    deconv_weights: str = "bilinear"  # Caffe's bilinear filler in every kernel (lr_mult 0), or "random"
    width: int = 64  # ResNet-50's stem and stage-1 width
    input_hw: tuple[int, int] = (800, 1344)  # the DummyData's shape
    v1: bool = False  # for prototxt()/caffemodel()


# The head copies' level tags in the seed: the fpn_layer index for P3..P5, then p6 and p7.
SEED_TAGS = ("p2", "p3", "p4", "p6", "p7")


def seed_outputs(opts: SeedOptions) -> dict[str, str]:
    """Our output name -> the seed port's blob (cls_p3 -> rpn_head_cls_logits_p2, ...)."""
    return {f"{ours}_p{lv}": f"rpn_head_{pred}_{tag}" for ours, pred in (("cls", "cls_logits"), ("box", "bbox_pred"))
            for lv, tag in zip(range(3, 8), SEED_TAGS)}


def seed_port(opts: SeedOptions, seed: int) -> list[CaffeLayer]:
    """The seed's NetSpec script, statement by statement as issue 17 describes its port: names with '.'
    -> '_' except backbone_fpn_fpn_inner3_lateral, backbone_fpn_topblocks_p6 and the per-level head
    copies rpn_head_{cls,bbox}_tower_<tag>_<index>; a DummyData input; FrozenBN as Scale with bias and
    every Scale and ReLU in place, including the ReLU on P6 written before the heads (so Caffe feeds
    the head relu(P6)); Deconvolution upsampling without group. Weights are random and well scaled."""
    rng = np.random.default_rng(seed)
    n = NetSpec()

    def weight(out: int, cin: int, k: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((out, cin, k, k), dtype=np.float32) * np.float32(np.sqrt(gain / (cin * k * k))))

    def bias(out: int) -> np.ndarray:
        return (0.1 * rng.standard_normal(out, dtype=np.float32)).astype(np.float32)

    def conv(bottom: Top, cin: int, out: int, k: int, s: int = 1, with_bias: bool = True,
             blobs: list[np.ndarray] | None = None, gain: float = 1.0) -> Top:
        params: dict[str, Any] = {"num_output": out, "kernel_size": k, "stride": s, "pad": k // 2}
        if not with_bias:
            params["bias_term"] = False
        blobs = blobs or [weight(out, cin, k, gain)] + ([bias(out)] if with_bias else [])
        return L.Convolution(bottom, weight_filler={"type": "msra"}, blobs=blobs, **params)

    def frozen_bn(bottom: Top, c: int) -> Top:  # FrozenBatchNorm2d ported as its folded affine
        gamma, beta = 0.5 + 0.5 * rng.random(c, dtype=np.float32), 0.1 * rng.standard_normal(c, dtype=np.float32)
        return L.Scale(bottom, bias_term=True, in_place=True, blobs=[gamma, beta])

    def deconv(bottom: Top) -> Top:
        f, group = opts.fpn, opts.deconv_group or 1
        if opts.deconv_weights == "bilinear":
            w = np.broadcast_to(np.outer(BILINEAR_TAPS, BILINEAR_TAPS), (f, f // group, 4, 4)).astype(np.float32)
        else:
            w = rng.standard_normal((f, f // group, 4, 4), dtype=np.float32) * np.float32(0.5 / np.sqrt(f // group))
        p: dict[str, Any] = {"num_output": f, "kernel_size": 4, "stride": 2, "pad": 1, "bias_term": False}
        if opts.deconv_group is not None:
            p["group"] = opts.deconv_group
        p["weight_filler"] = {"type": "bilinear"}
        return L.Deconvolution(bottom, convolution_param=p, param=[{"lr_mult": 0, "decay_mult": 0}], blobs=[w])

    n.data = L.DummyData(shape={"dim": [1, 3, *opts.input_hw]})
    n.backbone_body_stem_conv1 = conv(n.data, 3, opts.width, 7, 2, with_bias=False)
    n.backbone_body_stem_bn1 = frozen_bn(n.backbone_body_stem_conv1, opts.width)
    n.backbone_body_stem_relu = L.ReLU(n.backbone_body_stem_bn1, in_place=True)
    n.backbone_body_stem_pool = L.Pooling(n.backbone_body_stem_relu, pool=Enum("MAX"), kernel_size=3, stride=2)
    x, cin, feats = n.backbone_body_stem_pool, opts.width, []
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        width = opts.width * 2 ** (stage - 1)
        for i in range(blocks):
            p, stride = f"backbone_body_layer{stage}_{i}", 2 if i == 0 and stage > 1 else 1
            n[f"{p}_conv1"] = conv(x, cin, width, 1, stride, with_bias=False)  # stride in the 1x1
            n[f"{p}_bn1"] = frozen_bn(n[f"{p}_conv1"], width)
            n[f"{p}_relu1"] = L.ReLU(n[f"{p}_bn1"], in_place=True)
            n[f"{p}_conv2"] = conv(n[f"{p}_relu1"], width, width, 3, with_bias=False)
            n[f"{p}_bn2"] = frozen_bn(n[f"{p}_conv2"], width)
            n[f"{p}_relu2"] = L.ReLU(n[f"{p}_bn2"], in_place=True)
            n[f"{p}_conv3"] = conv(n[f"{p}_relu2"], width, 4 * width, 1, with_bias=False)
            n[f"{p}_bn3"] = frozen_bn(n[f"{p}_conv3"], 4 * width)
            identity = x
            if i == 0:
                n[f"{p}_downsample_0"] = conv(x, cin, 4 * width, 1, stride, with_bias=False)
                n[f"{p}_downsample_1"] = identity = frozen_bn(n[f"{p}_downsample_0"], 4 * width)
            n[f"{p}_add"] = L.Eltwise(n[f"{p}_bn3"], identity)
            n[f"{p}_relu"] = L.ReLU(n[f"{p}_add"], in_place=True)
            x, cin = n[f"{p}_relu"], 4 * width
        feats.append((x, cin))
    (c3, ch3), (c4, ch4), (c5, ch5) = feats[1:]
    f = opts.fpn
    n.backbone_fpn_fpn_inner4 = conv(c5, ch5, f, 1)
    n.backbone_fpn_fpn_layer4 = conv(n.backbone_fpn_fpn_inner4, f, f, 3)
    n.backbone_fpn_fpn_inner3_lateral = conv(c4, ch4, f, 1)
    n.backbone_fpn_fpn_inner3_top_down = deconv(n.backbone_fpn_fpn_inner4)
    n.backbone_fpn_fpn_inner3 = L.Eltwise(n.backbone_fpn_fpn_inner3_lateral, n.backbone_fpn_fpn_inner3_top_down)
    n.backbone_fpn_fpn_layer3 = conv(n.backbone_fpn_fpn_inner3, f, f, 3)
    n.backbone_fpn_fpn_inner2 = conv(c3, ch3, f, 1)
    n.backbone_fpn_fpn_inner2_top_down = deconv(n.backbone_fpn_fpn_inner3)
    n.backbone_fpn_fpn_inner2_sum = L.Eltwise(n.backbone_fpn_fpn_inner2, n.backbone_fpn_fpn_inner2_top_down)
    n.backbone_fpn_fpn_layer2 = conv(n.backbone_fpn_fpn_inner2_sum, f, f, 3)
    n.backbone_fpn_topblocks_p6 = conv(c5, ch5, f, 3, 2)
    n.backbone_fpn_topblocks_relu = L.ReLU(n.backbone_fpn_topblocks_p6, in_place=True)
    n.backbone_fpn_top_blocks_p7 = conv(n.backbone_fpn_topblocks_relu, f, f, 3, 2)
    features = [n.backbone_fpn_fpn_layer2, n.backbone_fpn_fpn_layer3, n.backbone_fpn_fpn_layer4,
                n.backbone_fpn_topblocks_p6, n.backbone_fpn_top_blocks_p7]  # P6 read after its in-place ReLU
    shared: dict[str, list[np.ndarray]] = {}
    for tag, feature in zip(SEED_TAGS, features):
        for tower, pred, n_out in (("cls", "cls_logits", 9 * opts.classes), ("bbox", "bbox_pred", 36)):
            h = feature
            for k in range(4):
                key = f"{tower}{k}"
                blobs = shared.get(key) if opts.shared_head else None
                n[f"rpn_head_{tower}_tower_{tag}_{2 * k}"] = conv(h, f, f, 3, blobs=blobs, gain=2.0)
                shared.setdefault(key, n[f"rpn_head_{tower}_tower_{tag}_{2 * k}"].fn.blobs)
                n[f"rpn_head_{tower}_tower_{tag}_{2 * k + 1}"] = h = L.ReLU(
                    n[f"rpn_head_{tower}_tower_{tag}_{2 * k}"], in_place=True)
            blobs = shared.get(pred) if opts.shared_head else None
            gain = 3.0 if pred == "cls_logits" else 0.2
            n[f"rpn_head_{pred}_{tag}"] = conv(h, f, n_out, 3, blobs=blobs, gain=gain)
            shared.setdefault(pred, n[f"rpn_head_{pred}_{tag}"].fn.blobs)
    return n.to_layers()
