"""Independent references of each source framework's RetinaNet inference, written from
../shared/facts/checkpoint-formats.md for the tests; nothing here calls the production model,
anchors, box coder or post-process.

- `reference_forward`: the source architecture run functionally on the *source-named* weights
  (stride placement, norm flavour and eps, FPN upsampling, P6 input, GroupNorm head).
- `reference_detections`: the framework's own anchors (generator, order, rounding, centre,
  stride), decode (weights, clamp, +1), thresholds, top-k, NMS (IoU rule, +1 areas), clipping,
  detection cap, rescale and label mapping, on raw per-level head outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from retinanet_trt.runtime.types import ImageMeta
from retinanet_trt.spec.coco import COCO_IDS

R50_STAGES = [(3, 64), (4, 128), (6, 256), (3, 512)]
CLAMP = math.log(1000.0 / 16)


# ---------------------------------------------------------------- forward on source names


@dataclass
class SourceNet:
    """How one framework names and runs its R50-FPN RetinaNet."""

    w: str  # weight / bias suffixes
    b: str
    stride_in_1x1: bool
    norm: str  # "tv_frozen" (eps 0), "bn" (eps 1e-5), "mb" (no eps), "affine"
    p6_from: str
    upsample: str  # "size" or "scale2"
    head_gn: bool

    # Name functions are filled per framework below.
    def stem(self) -> tuple[str, str]: ...
    def block(self, s: int, i: int, n: int) -> tuple[str, str]: ...
    def shortcut(self, s: int, i: int) -> tuple[str, str]: ...
    def lateral(self, lv: int) -> str: ...
    def output(self, lv: int) -> str: ...
    def extra(self, lv: int) -> str: ...
    def tower(self, head: str, n: int) -> str: ...
    def tower_gn(self, head: str, n: int) -> str: ...
    def pred(self, head: str) -> str: ...


class _TV(SourceNet):
    def __init__(self, v2: bool, legacy: bool) -> None:
        super().__init__(".weight", ".bias", False, "bn" if v2 else "tv_frozen", "c5" if v2 else "p5", "size", v2)
        self.sub = "" if legacy else ".0"
        self.legacy = legacy

    def stem(self): return "backbone.body.conv1", "backbone.body.bn1"
    def block(self, s, i, n): return f"backbone.body.layer{s}.{i}.conv{n}", f"backbone.body.layer{s}.{i}.bn{n}"
    def shortcut(self, s, i): return f"backbone.body.layer{s}.{i}.downsample.0", f"backbone.body.layer{s}.{i}.downsample.1"
    def lateral(self, lv): return f"backbone.fpn.inner_blocks.{lv - 3}{self.sub}"
    def output(self, lv): return f"backbone.fpn.layer_blocks.{lv - 3}{self.sub}"
    def extra(self, lv): return f"backbone.fpn.extra_blocks.p{lv}"
    def _head(self, head): return "classification_head" if head == "cls" else "regression_head"
    def tower(self, head, n): return f"head.{self._head(head)}.conv.{2 * n if self.legacy else f'{n}.0'}"
    def tower_gn(self, head, n): return f"head.{self._head(head)}.conv.{n}.1"
    def pred(self, head): return f"head.{self._head(head)}.{'cls_logits' if head == 'cls' else 'bbox_reg'}"


class _D2(SourceNet):
    def __init__(self) -> None:
        super().__init__(".weight", ".bias", True, "bn", "c5", "scale2", False)

    def stem(self): return "backbone.bottom_up.stem.conv1", "backbone.bottom_up.stem.conv1.norm"
    def block(self, s, i, n): return f"backbone.bottom_up.res{s + 1}.{i}.conv{n}", f"backbone.bottom_up.res{s + 1}.{i}.conv{n}.norm"
    def shortcut(self, s, i): return f"backbone.bottom_up.res{s + 1}.{i}.shortcut", f"backbone.bottom_up.res{s + 1}.{i}.shortcut.norm"
    def lateral(self, lv): return f"backbone.fpn_lateral{lv}"
    def output(self, lv): return f"backbone.fpn_output{lv}"
    def extra(self, lv): return f"backbone.top_block.p{lv}"
    def tower(self, head, n): return f"head.{'cls' if head == 'cls' else 'bbox'}_subnet.{2 * n}"
    def pred(self, head): return "head.cls_score" if head == "cls" else "head.bbox_pred"


class _MB(SourceNet):
    def __init__(self, p6_from: str) -> None:
        super().__init__(".weight", ".bias", True, "mb", p6_from, "scale2", False)

    def stem(self): return "backbone.body.stem.conv1", "backbone.body.stem.bn1"
    def block(self, s, i, n): return f"backbone.body.layer{s}.{i}.conv{n}", f"backbone.body.layer{s}.{i}.bn{n}"
    def shortcut(self, s, i): return f"backbone.body.layer{s}.{i}.downsample.0", f"backbone.body.layer{s}.{i}.downsample.1"
    def lateral(self, lv): return f"backbone.fpn.fpn_inner{lv - 1}"
    def output(self, lv): return f"backbone.fpn.fpn_layer{lv - 1}"
    def extra(self, lv): return f"backbone.fpn.top_blocks.p{lv}"
    def tower(self, head, n): return f"rpn.head.{'cls' if head == 'cls' else 'bbox'}_tower.{2 * n}"
    def pred(self, head): return "rpn.head.cls_logits" if head == "cls" else "rpn.head.bbox_pred"


class _YH(SourceNet):
    def __init__(self) -> None:
        super().__init__(".weight", ".bias", False, "bn", "c5", "scale2", False)

    def stem(self): return "conv1", "bn1"
    def block(self, s, i, n): return f"layer{s}.{i}.conv{n}", f"layer{s}.{i}.bn{n}"
    def shortcut(self, s, i): return f"layer{s}.{i}.downsample.0", f"layer{s}.{i}.downsample.1"
    def lateral(self, lv): return f"fpn.P{lv}_1"
    def output(self, lv): return f"fpn.P{lv}_2"
    def extra(self, lv): return "fpn.P6" if lv == 6 else "fpn.P7_2"
    def _head(self, head): return "classificationModel" if head == "cls" else "regressionModel"
    def tower(self, head, n): return f"{self._head(head)}.conv{n + 1}"
    def pred(self, head): return f"{self._head(head)}.output"


class _D1(SourceNet):
    _C = {3: "res3_3_sum", 4: "res4_5_sum", 5: "res5_2_sum"}

    def __init__(self) -> None:
        super().__init__("_w", "_b", True, "affine", "c5", "scale2", False)

    def stem(self): return "conv1", "res_conv1"
    def block(self, s, i, n): return (f"res{s + 1}_{i}_branch2{'abc'[n - 1]}",) * 2
    def shortcut(self, s, i): return (f"res{s + 1}_{i}_branch1",) * 2
    def lateral(self, lv): return f"fpn_inner_{self._C[lv]}" + ("" if lv == 5 else "_lateral")
    def output(self, lv): return f"fpn_{self._C[lv]}"
    def extra(self, lv): return f"fpn_{lv}"
    def tower(self, head, n): return f"retnet_{'cls' if head == 'cls' else 'bbox'}_conv_n{n}_fpn3"
    def pred(self, head): return f"retnet_{'cls' if head == 'cls' else 'bbox'}_pred_fpn3"


def source_net(framework: str, legacy: bool = True, p6_from: str = "c5") -> SourceNet:
    if framework.startswith("torchvision"):
        return _TV(v2=framework == "torchvision_v2", legacy=legacy and framework == "torchvision_v1")
    return {"detectron2": _D2, "yhenon": _YH, "detectron": _D1}.get(framework, lambda: _MB(p6_from))()


@torch.no_grad()
def reference_forward(sd: dict[str, torch.Tensor], net: SourceNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """images (N, 3, H, W) -> {"cls_p3": (N, A*K, H/8, W/8), ..., "box_p7": ...} in the source's channels."""

    def conv(name: str, t: torch.Tensor, stride: int = 1, pad: int = 0) -> torch.Tensor:
        return F.conv2d(t, sd[name + net.w], sd.get(name + net.b), stride, pad)

    def norm(name: str, t: torch.Tensor) -> torch.Tensor:
        if net.norm == "affine":  # Detectron AffineChannel
            return t * sd[name + "_bn_s"].view(1, -1, 1, 1) + sd[name + "_bn_b"].view(1, -1, 1, 1)
        w, b = sd[name + ".weight"], sd[name + ".bias"]
        rm, rv = sd[name + ".running_mean"], sd[name + ".running_var"]
        if net.norm == "bn":
            return F.batch_norm(t, rm, rv, w, b, False, 0.0, 1e-5)
        # torchvision FrozenBatchNorm2d (eps overwritten to 0) / maskrcnn-benchmark (no eps at all)
        scale = w * rv.rsqrt()
        return t * scale.view(1, -1, 1, 1) + (b - rm * scale).view(1, -1, 1, 1)

    c, n = net.stem()
    t = F.max_pool2d(F.relu(norm(n, conv(c, x, 2, 3))), 3, 2, 1)
    feats = []
    for s, (blocks, _) in enumerate(R50_STAGES, start=1):
        for i in range(blocks):
            stride = 2 if i == 0 and s > 1 else 1
            s1, s3 = (stride, 1) if net.stride_in_1x1 else (1, stride)
            c1, n1 = net.block(s, i, 1)
            c2, n2 = net.block(s, i, 2)
            c3, n3 = net.block(s, i, 3)
            out = F.relu(norm(n1, conv(c1, t, s1)))
            out = F.relu(norm(n2, conv(c2, out, s3, 1)))
            out = norm(n3, conv(c3, out))
            if i == 0:
                cs, ns = net.shortcut(s, i)
                t = norm(ns, conv(cs, t, stride))
            t = F.relu(out + t)
        feats.append(t)
    c3_, c4_, c5_ = feats[1:]

    def up(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        if net.upsample == "size":
            return F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
        return F.interpolate(top, scale_factor=2.0, mode="nearest")

    inner5 = conv(net.lateral(5), c5_)
    lat4 = conv(net.lateral(4), c4_)
    inner4 = lat4 + up(inner5, lat4)
    lat3 = conv(net.lateral(3), c3_)
    inner3 = lat3 + up(inner4, lat3)
    p = [conv(net.output(3), inner3, 1, 1), conv(net.output(4), inner4, 1, 1), conv(net.output(5), inner5, 1, 1)]
    p6 = conv(net.extra(6), c5_ if net.p6_from == "c5" else p[2], 2, 1)
    p += [p6, conv(net.extra(7), F.relu(p6), 2, 1)]
    out: dict[str, torch.Tensor] = {}
    for lv, feature in zip(range(3, 8), p, strict=True):
        for head in ("cls", "box"):
            h = feature
            for k in range(4):
                h = conv(net.tower(head, k), h, 1, 1)
                if net.head_gn:
                    g = net.tower_gn(head, k)
                    h = F.group_norm(h, 32, sd[g + ".weight"], sd[g + ".bias"], 1e-5)
                h = F.relu(h)
            out[f"{head}_p{lv}"] = conv(net.pred(head), h, 1, 1)
    return out


# ---------------------------------------------------------------- anchors, in each source's own way


def _legacy_generate_anchors(stride: int, sizes: tuple[float, ...], ratios: tuple[float, ...]) -> np.ndarray:
    """Detectron's generate_anchors (float64): ratio-major over `ratios`, scale-minor over `sizes`."""

    def whctrs(a: np.ndarray) -> tuple[float, float, float, float]:
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(ws: np.ndarray, hs: np.ndarray, xc: float, yc: float) -> np.ndarray:
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack((xc - 0.5 * (ws - 1), yc - 0.5 * (hs - 1), xc + 0.5 * (ws - 1), yc + 0.5 * (hs - 1)))

    base = np.array([1, 1, stride, stride], dtype=np.float64) - 1
    w, h, xc, yc = whctrs(base)
    size_ratios = (w * h) / np.array(ratios, dtype=np.float64)
    ws = np.round(np.sqrt(size_ratios))
    hs = np.round(ws * np.array(ratios))
    ratio_anchors = mk(ws, hs, xc, yc)
    scales = np.array(sizes, dtype=np.float64) / stride
    out = []
    for a in ratio_anchors:
        w, h, xc, yc = whctrs(a)
        out.append(mk(w * scales, h * scales, xc, yc))
    return np.vstack(out)


def cell_anchors(framework: str, level: int) -> np.ndarray:
    """(9, 4) cell anchors of one level in the framework's anchor order (x1, y1, x2, y2)."""
    stride, base = 2**level, 2 ** (level + 2)
    octaves = [2 ** (i / 3) for i in range(3)]
    if framework.startswith("torchvision"):
        scales = torch.tensor([base, int(base * octaves[1]), int(base * octaves[2])], dtype=torch.float32)
        h_ratios = torch.sqrt(torch.tensor([0.5, 1.0, 2.0]))
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)  # ratio outer, size inner
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round().numpy()
    if framework == "detectron2":
        rows = []
        for size in (base * o for o in octaves):  # size outer, ratio inner
            for ar in (0.5, 1.0, 2.0):
                w = math.sqrt(size * size / ar)
                h = ar * w
                rows.append([-w / 2, -h / 2, w / 2, h / 2])
        return np.array(rows, dtype=np.float32)
    if framework == "maskrcnn_benchmark":
        return _legacy_generate_anchors(stride, tuple(base * o for o in octaves), (0.5, 1.0, 2.0))
    if framework == "detectron":  # octave outer, aspect ratio (1, 2, 0.5) inner, one anchor at a time
        return np.vstack([_legacy_generate_anchors(stride, (stride * o * 4,), (ar,))
                          for o in octaves for ar in (1.0, 2.0, 0.5)])
    if framework == "yhenon":
        ratios, scales = np.array([0.5, 1, 2]), np.array(octaves)
        a = np.zeros((9, 4))
        a[:, 2:] = base * np.tile(scales, (2, 3)).T
        areas = a[:, 2] * a[:, 3]
        a[:, 2] = np.sqrt(areas / np.repeat(ratios, 3))
        a[:, 3] = a[:, 2] * np.repeat(ratios, 3)
        a[:, 0::2] -= np.tile(a[:, 2] * 0.5, (2, 1)).T
        a[:, 1::2] -= np.tile(a[:, 3] * 0.5, (2, 1)).T
        return a
    raise ValueError(framework)


def level_anchors(framework: str, level: int, feat_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """(H*W*9, 4) float32 anchors over the grid, y outer, x, anchor innermost."""
    cell = cell_anchors(framework, level)
    fh, fw = feat_hw
    if framework.startswith("torchvision"):  # stride = padded input // feature size, per axis
        sy, sx = input_hw[0] // fh, input_hw[1] // fw
        ys, xs = torch.meshgrid(torch.arange(fh, dtype=torch.int32) * sy, torch.arange(fw, dtype=torch.int32) * sx,
                                indexing="ij")
        shifts = torch.stack([xs.reshape(-1), ys.reshape(-1)] * 2, dim=1)
        return (shifts.view(-1, 1, 4) + torch.from_numpy(cell).view(1, -1, 4)).reshape(-1, 4).numpy()
    stride = 2**level
    offset = 0.5 if framework == "yhenon" else 0.0
    xs = (np.arange(fw) + offset) * stride
    ys = (np.arange(fh) + offset) * stride
    gx, gy = np.meshgrid(xs, ys)
    shifts = np.stack([gx.ravel(), gy.ravel(), gx.ravel(), gy.ravel()], axis=1)
    if framework in ("detectron2",):  # float32 arithmetic
        return (shifts.astype(np.float32)[:, None, :] + cell[None].astype(np.float32)).reshape(-1, 4)
    return (shifts[:, None, :] + cell[None]).reshape(-1, 4).astype(np.float32)


# ---------------------------------------------------------------- decode and NMS


def decode(deltas: np.ndarray, anchors: np.ndarray, weights: tuple[float, ...], clamp: float | None,
           plus_one: bool) -> np.ndarray:
    """(M, 4) deltas (dx, dy, dw, dh) on (M, 4) anchors -> boxes, float32 as the frameworks compute."""
    d = deltas.astype(np.float32)
    a = anchors.astype(np.float32)
    one = np.float32(1.0 if plus_one else 0.0)
    widths = a[:, 2] - a[:, 0] + one
    heights = a[:, 3] - a[:, 1] + one
    cx = a[:, 0] + np.float32(0.5) * widths
    cy = a[:, 1] + np.float32(0.5) * heights
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    dx, dy, dw, dh = d[:, 0] / wx, d[:, 1] / wy, d[:, 2] / ww, d[:, 3] / wh
    if clamp is not None:
        dw, dh = np.minimum(dw, np.float32(clamp)), np.minimum(dh, np.float32(clamp))
    pcx, pcy = dx * widths + cx, dy * heights + cy
    pw, ph = np.exp(dw) * widths, np.exp(dh) * heights
    half = np.float32(0.5)
    return np.stack([pcx - half * pw, pcy - half * ph, pcx + half * pw - one, pcy + half * ph - one], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float, rule: str, plus_one: bool) -> np.ndarray:
    """Greedy NMS in float32 by descending score: indices kept, in score order."""
    b = boxes.astype(np.float32)
    one = np.float32(1.0 if plus_one else 0.0)
    areas = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        iw = np.maximum(np.float32(0), np.minimum(b[i, 2], b[:, 2]) - np.maximum(b[i, 0], b[:, 0]) + one)
        ih = np.maximum(np.float32(0), np.minimum(b[i, 3], b[:, 3]) - np.maximum(b[i, 1], b[:, 1]) + one)
        inter = iw * ih
        # Boxes clipped flat have zero area: 0/0 is NaN, which suppresses nothing, as in C++ NMS.
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (areas[i] + areas - inter)
        suppressed |= (iou >= thresh) if rule == "ge" else (iou > thresh)
    return np.array(keep, dtype=np.int64)


def per_class_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, thresh: float, rule: str,
                  plus_one: bool) -> np.ndarray:
    """Indices kept by NMS run separately per label, sorted by descending score."""
    keep = [np.flatnonzero(labels == c)[nms(boxes[labels == c], scores[labels == c], thresh, rule, plus_one)]
            for c in np.unique(labels)]
    kept = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    return kept[np.argsort(-scores[kept], kind="stable")]


# ---------------------------------------------------------------- post-processing per framework


@dataclass
class RefDetections:
    boxes: np.ndarray  # (D, 4) float32, original-image pixels
    scores: np.ndarray  # (D,)
    labels: np.ndarray  # (D,) label ids (COCO ids)


def _flat(t: np.ndarray, k: int) -> np.ndarray:
    """(A*k, H, W) -> (H*W*A, k): location-major, anchor, then channel (the frameworks' permute)."""
    a = t.shape[0] // k
    return t.reshape(a, k, t.shape[1], t.shape[2]).transpose(2, 3, 0, 1).reshape(-1, k)


def _sigmoid32(x: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def _scale_to_original(boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    rw = np.float32(meta.original_hw[1]) / np.float32(meta.resized_hw[1])
    rh = np.float32(meta.original_hw[0]) / np.float32(meta.resized_hw[0])
    return boxes * np.array([rw, rh, rw, rh], dtype=np.float32)


def _framework_scale(framework: str, original_hw: tuple[int, int]) -> float:
    """The one factor Detectron (im_scale, 800 / 1333) and yhenon (scale, 608 / 1024) resized with
    and divide boxes by (facts 4e, 5d): min_size / short, capped by max_size / long (Detectron when
    round(scale * long) > max_size, yhenon when long * scale > max_size)."""
    short, long = min(original_hw), max(original_hw)
    if framework == "detectron":
        scale = 800.0 / short
        return 1333.0 / long if np.round(scale * long) > 1333 else scale
    scale = 608 / short
    return 1024 / long if long * scale > 1024 else scale


def _unscale(framework: str, boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Boxes / the framework's scale where the meta is the framework's own resize of its image; a
    hand-made meta (sizes the framework would not choose) has no such factor: per axis."""
    scale = _framework_scale(framework, meta.original_hw)
    if tuple(round(side * scale) for side in meta.original_hw) == tuple(meta.resized_hw):
        return boxes / np.float32(scale)
    return _scale_to_original(boxes, meta)


def reference_detections(framework: str, cls: list[np.ndarray], box: list[np.ndarray], meta: ImageMeta,
                         num_classes: int) -> RefDetections:
    """One image: cls[l] (A*K, H, W) logits and box[l] (A*4, H, W) deltas for P3..P7."""
    k = num_classes
    fw = framework
    weights = (10.0, 10.0, 5.0, 5.0) if fw in ("maskrcnn_benchmark", "yhenon") else (1.0, 1.0, 1.0, 1.0)
    plus_one = fw in ("maskrcnn_benchmark", "detectron")
    clamp = None if fw == "yhenon" else CLAMP
    anchors = [level_anchors(fw, lv, c.shape[1:], meta.input_hw) for lv, c in zip(range(3, 8), cls, strict=True)]
    rh, rw = meta.resized_hw

    if fw == "yhenon":  # all levels at once, per class: > 0.05 then NMS 0.5; no top-k, no cap
        scores = _sigmoid32(np.concatenate([_flat(c, k) for c in cls]))
        boxes = decode(np.concatenate([_flat(b, 4) for b in box]), np.concatenate(anchors), weights, clamp, plus_one)
        ih, iw = meta.input_hw
        boxes[:, 0:2] = np.maximum(boxes[:, 0:2], 0)
        boxes[:, 2] = np.minimum(boxes[:, 2], iw)
        boxes[:, 3] = np.minimum(boxes[:, 3], ih)
        out_b, out_s, out_l = [], [], []
        for c in range(k):
            m = scores[:, c] > 0.05
            if not m.any():
                continue
            keep = nms(boxes[m], scores[m, c], 0.5, "gt", False)
            out_b.append(boxes[m][keep])
            out_s.append(scores[m, c][keep])
            out_l.append(np.full(len(keep), c))
        b_, s_, l_ = (np.concatenate(x) for x in (out_b, out_s, out_l))
        b_ = _unscale(fw, b_, meta)  # coco_eval: boxes /= scale
        return RefDetections(b_, s_, np.array(COCO_IDS)[l_])

    cand_b, cand_s, cand_l = [], [], []
    for lv, c, b, anc in zip(range(3, 8), cls, box, anchors, strict=True):
        scores = _sigmoid32(_flat(c, k)).reshape(-1)
        deltas = _flat(b, 4)
        thresh = 0.0 if (fw == "detectron" and lv == 7) else 0.05
        idx = np.flatnonzero(scores > thresh)
        top = idx[np.argsort(-scores[idx], kind="stable")[:1000]]
        a_idx, labels = top // k, top % k
        boxes = decode(deltas[a_idx], anc[a_idx], weights, clamp, plus_one)
        if fw.startswith("torchvision"):  # per level, to the resized image
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, rw)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, rh)
        elif fw == "maskrcnn_benchmark":
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, rw - 1)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, rh - 1)
        elif fw == "detectron":  # divide by the image scale, clip to the original image
            boxes = _unscale(fw, boxes, meta)
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, meta.original_hw[1] - 1)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, meta.original_hw[0] - 1)
        cand_b.append(boxes)
        cand_s.append(scores[top])
        cand_l.append(labels)
    boxes, scores, labels = (np.concatenate(x) for x in (cand_b, cand_s, cand_l))

    if fw.startswith("torchvision"):
        keep = per_class_nms(boxes, scores, labels, 0.5, "gt", False)[:300]
        return RefDetections(_scale_to_original(boxes[keep], meta), scores[keep], labels[keep])
    if fw == "detectron2":
        keep = per_class_nms(boxes, scores, labels, 0.5, "gt", False)[:100]
        b = _scale_to_original(boxes[keep], meta)
        b[:, 0::2] = np.clip(b[:, 0::2], 0, meta.original_hw[1])
        b[:, 1::2] = np.clip(b[:, 1::2], 0, meta.original_hw[0])
        nonempty = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        return RefDetections(b[nonempty], scores[keep][nonempty], np.array(COCO_IDS)[labels[keep][nonempty]])
    if fw == "maskrcnn_benchmark":
        keep = per_class_nms(boxes, scores, labels, 0.4, "ge", True)
        if len(keep) > 100:  # kthvalue: keep every score >= the 100th best
            kth = np.sort(scores[keep])[len(keep) - 100]
            keep = keep[scores[keep] >= kth]
        return RefDetections(_scale_to_original(boxes[keep], meta), scores[keep], np.array(COCO_IDS)[labels[keep]])
    if fw == "detectron":
        keep = per_class_nms(boxes, scores, labels, 0.5, "ge", True)[:100]
        return RefDetections(boxes[keep], scores[keep], np.array(COCO_IDS)[labels[keep]])
    raise ValueError(fw)
