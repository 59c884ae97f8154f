"""An independent reference of MindSpore's RetinaNet inference (official/cv/RetinaNet: src/retinanet.py,
src/box_utils.py, src/dataset.py, eval.py), written from ../shared/facts/mindspore-caffe.md A2 for the
tests; nothing here calls the production model, pre-process, anchors, box coder or post-process.

- `preprocess`: cv2.resize of the uint8 RGB image to the fixed size, then Normalize (ImageNet x 255), CHW;
- `forward`: the network on the checkpoint's own names: pad_mode 'same' everywhere (SAME_UPPER; the
  max-pool ignores its pads), BN eps 1e-5, ReLU before the residual add on both branches,
  ResizeNearestNeighbor to the next level's size, P6 from C5, one head per level, no biases;
- `detections`: FlattenConcat, the normalised [cy, cx, h, w] default boxes, the decoder of
  retinanetInferWithDecoder with its [0, 1] clip, and eval.py's per-class loop: logit > min_score,
  boxes x [h, w, h, w], apply_nms with +1 areas keeping IoU <= 0.6, up to max_boxes per class.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from retinanet_trt.spec.coco import COCO_IDS

STEPS = [8, 16, 32, 64, 128]
ANCHOR_SIZES = [32, 64, 128, 256, 512]
ASPECT_RATIOS = [0.5, 1.0, 2.0]  # w / h
PRIOR_SCALING = (0.1, 0.2)
MIN_SCORE, NMS_THRESHOLD, MAX_BOXES, NUM_CLASSES = 0.1, 0.6, 100, 81
MEAN = np.array([0.485 * 255, 0.456 * 255, 0.406 * 255], dtype=np.float32)
STD = np.array([0.229 * 255, 0.224 * 255, 0.225 * 255], dtype=np.float32)


def preprocess(rgb: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, side, side) float32: _infer_data's cv2.resize, then C.Normalize, HWC2CHW."""
    image = cv2.resize(rgb, (side, side))
    return ((image.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)


def _same(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """pad_mode 'same': total max((ceil(n/s) - 1) * s + k - n, 0), the odd pixel right/bottom."""
    pads = []
    for n in (x.shape[3], x.shape[2]):  # F.pad lists the last axis first
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


def _resize_nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    """ResizeNearestNeighbor((size, size)), align_corners False: source index floor(dst * in / out)."""
    rows = torch.tensor([math.floor(i * x.shape[2] / size) for i in range(size)])
    cols = torch.tensor([math.floor(j * x.shape[3] / size) for j in range(size)])
    return x[:, :, rows][:, :, :, cols]


@torch.no_grad()
def forward(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int = 50) -> tuple[list, list]:
    """images (N, 3, S, S) -> (loc per level (N, 36, H, W) as (dy, dx, dh, dw) x 9, cls per level (N, 729, H, W))."""
    root = "network.fpn." if depth in (101, 152) else "network."

    def conv(name: str, t: torch.Tensor, stride: int = 1) -> torch.Tensor:
        w = sd[f"{name}.weight"]
        return F.conv2d(_same(t, w.shape[-1], stride), w, None, stride)

    def bn(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, sd[f"{name}.moving_mean"], sd[f"{name}.moving_variance"], sd[f"{name}.gamma"],
                            sd[f"{name}.beta"], False, 0.0, 1e-5)

    def conv_bn_relu(name: str, t: torch.Tensor, stride: int = 1) -> torch.Tensor:  # ConvBNReLU
        return F.relu(bn(f"{name}.features.1", conv(f"{name}.features.0", t, stride)))

    def conv_bn_act(name: str, t: torch.Tensor, stride: int = 1) -> torch.Tensor:  # Conv2dBnAct(relu)
        return F.relu(bn(f"{name}.batchnorm", conv(f"{name}.conv", t, stride)))

    b = f"{root}backbone"
    t = conv_bn_relu(f"{b}.conv1", x, 2)
    t = F.max_pool2d(_same(t, 3, 2, float("-inf")), 3, 2)
    blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
    feats = []
    for stage, n in enumerate(blocks, start=1):
        for i in range(n):
            p = f"{b}.layer{stage}.{i}"
            stride = 2 if i == 0 and stage > 1 else 1
            out = conv_bn_relu(f"{p}.conv1", t)
            out = conv_bn_relu(f"{p}.conv2", out, stride)
            out = conv_bn_act(f"{p}.conv3", out)
            identity = conv_bn_act(f"{p}.down_sample_layer", t, stride) if i == 0 else t
            t = F.relu(out + identity)
        feats.append(t)
    c3, c4, c5 = feats[1:]
    p5 = conv(f"{root}P5_1", c5)
    p5_up = _resize_nearest(p5, c4.shape[2])
    p5 = conv(f"{root}P5_2", p5)
    p4 = conv(f"{root}P4_1", c4) + p5_up
    p4_up = _resize_nearest(p4, c3.shape[2])
    p4 = conv(f"{root}P4_2", p4)
    p3 = conv(f"{root}P3_2", conv(f"{root}P3_1", c3) + p4_up)
    p6 = conv(f"{root}P6_0", c5, 2)
    p7 = conv(f"{root}P7_2", F.relu(p6), 2)
    locs, clss = [], []
    for level, feature in enumerate((p3, p4, p5, p6, p7)):
        for head, out_list in (("loc", locs), ("cls", clss)):
            h = feature
            for idx in (0, 2, 4, 6):
                h = F.relu(conv(f"network.multi_box.multi_{head}_layers.{level}.{idx}", h))
            out_list.append(conv(f"network.multi_box.multi_{head}_layers.{level}.8", h))
    return locs, clss


def flatten_concat(maps: list[np.ndarray]) -> np.ndarray:
    """FlattenConcat for one image: (C, H, W) per level -> (num_boxes, C / 9) via NHWC."""
    flat = np.concatenate([m.transpose(1, 2, 0).reshape(-1) for m in maps])
    return flat.reshape(sum(m.shape[1] * m.shape[2] for m in maps) * 9, -1)


def default_boxes(side: int, feature_sizes: list[int]) -> np.ndarray:
    """GeneratDefaultBoxes: (num_boxes, 4) float32 [cy, cx, h, w] normalised to the input side."""
    fk = side / np.array(STEPS)
    scales = np.array([2**0, 2 ** (1.0 / 3.0), 2 ** (2.0 / 3.0)])
    boxes = []
    for idex, feature_size in enumerate(feature_sizes):
        base = ANCHOR_SIZES[idex] / side
        all_sizes = []
        for aspect_ratio in ASPECT_RATIOS:
            for size in base * scales:
                all_sizes.append((size / math.sqrt(aspect_ratio), size * math.sqrt(aspect_ratio)))  # (h, w)
        for i, j in itertools.product(range(feature_size), repeat=2):
            for h, w in all_sizes:
                boxes.append([(i + 0.5) / fk[idex], (j + 0.5) / fk[idex], h, w])
    return np.array(boxes, dtype=np.float32)


def decode(loc: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """retinanetInferWithDecoder in float32: (num_boxes, 4) (y0, x0, y1, x1) clipped to [0, 1]."""
    xy, wh = anchors[:, :2], anchors[:, 2:]
    pred_xy = loc[:, :2] * np.float32(PRIOR_SCALING[0]) * wh + xy
    pred_wh = np.exp(loc[:, 2:] * np.float32(PRIOR_SCALING[1])) * wh
    boxes = np.concatenate([pred_xy - pred_wh / np.float32(2.0), pred_xy + pred_wh / np.float32(2.0)], axis=1)
    return np.minimum(np.maximum(boxes, np.float32(0)), np.float32(1))


def apply_nms(all_boxes: np.ndarray, all_scores: np.ndarray, thres: float, max_boxes: int) -> list[int]:
    """eval.py's greedy NMS on (y1, x1, y2, x2) boxes: +1 areas, survivors have IoU <= thres."""
    y1, x1, y2, x2 = (all_boxes[:, i] for i in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = all_scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        if len(keep) >= max_boxes:
            break
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thres)[0] + 1]
    return keep


@dataclass
class Detections:
    boxes: np.ndarray  # (D, 4) x1, y1, x2, y2 in original pixels
    scores: np.ndarray  # (D,) logits
    labels: np.ndarray  # (D,) COCO ids


def detections(loc: list[np.ndarray], cls: list[np.ndarray], image_hw: tuple[int, int], side: int) -> Detections:
    """One image: loc[l] (36, H, W), cls[l] (729, H, W) raw outputs -> eval.py's detections."""
    anchors = default_boxes(side, [m.shape[1] for m in cls])
    pred_boxes = decode(flatten_concat(loc), anchors)
    box_scores = flatten_concat(cls)
    h, w = np.float32(image_hw[0]), np.float32(image_hw[1])  # image_shape is float32
    out_b, out_s, out_l = [], [], []
    for c in range(1, NUM_CLASSES):
        class_box_scores = box_scores[:, c]
        score_mask = class_box_scores > MIN_SCORE
        class_box_scores = class_box_scores[score_mask]
        class_boxes = pred_boxes[score_mask] * np.array([h, w, h, w])
        if score_mask.any():
            nms_index = apply_nms(class_boxes, class_box_scores, NMS_THRESHOLD, MAX_BOXES)
            out_b.append(class_boxes[nms_index][:, [1, 0, 3, 2]])
            out_s.append(class_box_scores[nms_index])
            out_l.append(np.full(len(nms_index), COCO_IDS[c - 1]))
    if not out_b:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    return Detections(np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_l))
