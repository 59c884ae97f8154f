"""The frameworks' own test-time input pipelines, written from their code (facts/checkpoint-formats.md
1g, 2f, 3f, 4f, 5f) with the real library each resizes with (torch, Pillow, skimage, cv2), and the
detection matcher the exactness tests share. Nothing here calls the production pre-process.

Each pipeline takes an (H, W, 3) uint8 RGB image and returns (padded network input (1, 3, H, W)
float32 tensor, resized (h, w)), so the padded size is the framework's own test size for that image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import framework_reference as ref
import numpy as np
import skimage.transform
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from retinanet_trt.runtime.types import Detections

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
DETECTRON_PIXEL_MEANS = np.array([[[102.9801, 115.9465, 122.7717]]])  # cfg.PIXEL_MEANS, BGR, float64


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's CPU bilinear kernel depends on the thread count (one thread: channels-last kernel)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------- the frameworks' own input pipelines


Pipeline = tuple[torch.Tensor, tuple[int, int]]  # (1, 3, H, W) padded network input, resized (h, w)


def torchvision_input(rgb: np.ndarray, min_size: float = 800.0, max_size: float = 1333.0) -> Pipeline:
    """ObjectDetection preset (pil_to_tensor, convert_image_dtype) + GeneralizedRCNNTransform:
    normalise, resize, batch_images. (H, W, 3) uint8 RGB."""
    image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous().to(torch.float32) / 255
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32)
    image = (image - mean[:, None, None]) / std[:, None, None]
    im_shape = torch.tensor(image.shape[-2:])
    scale = torch.min(min_size / torch.min(im_shape).to(torch.float32),
                      max_size / torch.max(im_shape).to(torch.float32)).item()
    image = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                          align_corners=False)[0]
    h, w = (int(math.ceil(s / 32.0) * 32) for s in image.shape[-2:])
    batched = image.new_full((1, 3, h, w), 0)
    batched[0, :, : image.shape[1], : image.shape[2]].copy_(image)
    return batched, (image.shape[1], image.shape[2])


def yhenon_input(rgb: np.ndarray, min_side: int = 608, max_side: int = 1024) -> Pipeline:
    """CSVDataset.load_image + Normalizer + Resizer + collater's permute. (H, W, 3) uint8 RGB."""
    image = rgb.astype(np.float32) / 255.0
    image = (image.astype(np.float32) - np.array([[IMAGENET_MEAN]])) / np.array([[IMAGENET_STD]])
    rows, cols, _ = image.shape
    scale = min_side / min(rows, cols)
    if max(rows, cols) * scale > max_side:
        scale = max_side / max(rows, cols)
    image = skimage.transform.resize(image, (int(round(rows * scale)), int(round(cols * scale))))
    rows, cols, cns = image.shape
    new_image = np.zeros((rows + 32 - rows % 32, cols + 32 - cols % 32, cns)).astype(np.float32)
    new_image[:rows, :cols, :] = image.astype(np.float32)
    return torch.from_numpy(new_image).permute(2, 0, 1)[None], (rows, cols)


def detectron_input(bgr: np.ndarray, target_size: int = 800, max_size: int = 1333) -> Pipeline:
    """blob.prep_im_for_blob + im_list_to_blob (FPN: pad to COARSEST_STRIDE 128). (H, W, 3) uint8 BGR."""
    im = bgr.astype(np.float32, copy=False)
    im = cv2.subtract(im, DETECTRON_PIXEL_MEANS.reshape((1,) + im.shape[-1:]))
    im_size_min, im_size_max = np.min(im.shape[0:2]), np.max(im.shape[0:2])
    im_scale = float(target_size) / float(im_size_min)
    if np.round(im_scale * im_size_max) > max_size:
        im_scale = float(max_size) / float(im_size_max)
    im = cv2.resize(im, None, None, fx=im_scale, fy=im_scale, interpolation=cv2.INTER_LINEAR)
    h, w = (int(np.ceil(s / 128.0) * 128) for s in im.shape[:2])
    blob = np.zeros((1, h, w, 3), dtype=np.float32)
    blob[0, : im.shape[0], : im.shape[1], :] = im
    return torch.from_numpy(blob.transpose(0, 3, 1, 2)), im.shape[:2]


def framework_input(framework: str, rgb: np.ndarray) -> Pipeline:
    return PIPELINES["torchvision_v1" if framework.startswith("torchvision") else framework](rgb)


# ---------------------------------------------------------------- images


def random_image(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def photo(hw: tuple[int, int]) -> np.ndarray:
    """skimage's coffee photo (400x600) brought to hw with Pillow: just a raw input of that size."""
    return np.array(Image.fromarray(data.coffee()).resize((hw[1], hw[0]), Image.Resampling.LANCZOS))


CAFFE_MEANS_BGR = [102.9801, 115.9465, 122.7717]  # maskrcnn-benchmark / Detectron PIXEL_MEAN
D2_MEANS_BGR = [103.530, 116.280, 123.675]  # detectron2 MSRA R50 PIXEL_MEAN, PIXEL_STD 1


def _pad(t: torch.Tensor, divisor: int) -> torch.Tensor:
    """(3, h, w) -> (1, 3, H, W) zero-padded bottom/right to multiples of divisor (ImageList / to_image_list)."""
    h, w = (int(math.ceil(s / divisor) * divisor) for s in t.shape[-2:])
    out = t.new_zeros((1, 3, h, w))
    out[0, :, : t.shape[1], : t.shape[2]] = t
    return out


def detectron2_input(rgb: np.ndarray, short: int = 800, max_size: int = 1333) -> Pipeline:
    """DefaultPredictor: BGR uint8 (cv2.imread), ResizeShortestEdge.get_output_shape, PIL BILINEAR
    on uint8 (ResizeTransform.apply_image), float32 CHW, (x - PIXEL_MEAN) / PIXEL_STD, pad to 32."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    h, w = bgr.shape[:2]
    scale = short * 1.0 / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    neww, newh = int(neww + 0.5), int(newh + 0.5)
    resized = np.asarray(Image.fromarray(bgr).resize((neww, newh), Image.Resampling.BILINEAR))
    x = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    mean = torch.tensor(D2_MEANS_BGR).view(-1, 1, 1)
    std = torch.tensor([1.0, 1.0, 1.0]).view(-1, 1, 1)
    return _pad((x - mean) / std, 32), (newh, neww)


def maskrcnn_benchmark_input(rgb: np.ndarray, min_size: int = 800, max_size: int = 1333) -> Pipeline:
    """T.Resize.get_size + F.resize (PIL bilinear), ToTensor (/255), Normalize(to_bgr255: [2,1,0] * 255,
    minus PIXEL_MEAN, std 1), to_image_list with SIZE_DIVISIBILITY 32."""
    image = Image.fromarray(rgb)
    w, h = image.size
    size = min_size
    lo, hi = float(min(w, h)), float(max(w, h))
    if hi / lo * size > max_size:
        size = int(round(max_size * lo / hi))
    if (w <= h and w == size) or (h <= w and h == size):
        oh, ow = h, w
    elif w < h:
        ow, oh = size, int(size * h / w)
    else:
        oh, ow = size, int(size * w / h)
    if (oh, ow) != (h, w):
        image = image.resize((ow, oh), Image.Resampling.BILINEAR)
    t = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().float().div(255)
    t = t[[2, 1, 0]] * 255
    t = (t - torch.tensor(CAFFE_MEANS_BGR).view(-1, 1, 1)) / torch.tensor([1.0, 1.0, 1.0]).view(-1, 1, 1)
    return _pad(t, 32), (oh, ow)


PIPELINES = {
    "torchvision_v1": torchvision_input, "yhenon": yhenon_input, "detectron2": detectron2_input,
    "maskrcnn_benchmark": maskrcnn_benchmark_input,
    "detectron": lambda rgb: detectron_input(np.ascontiguousarray(rgb[:, :, ::-1])),  # cv2.imread gives BGR
}


# ---------------------------------------------------------------- matching detections


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with boxes (M, 4); two boxes clipped flat (no area) count as 1 when their
    corners agree to 1e-3, since IoU says nothing there."""
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    same_corners = (np.abs(b - a).max(axis=1) <= 1e-3).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, same_corners)


def match_detections(ours: Detections, theirs: ref.RefDetections) -> tuple[int, float, float]:
    """Reference detections matched one-to-one (best score first) to ours with the same label,
    IoU >= 0.99 and score within 1e-3: (matched, min IoU, max score diff) over the matches."""
    used = np.zeros(len(ours), dtype=bool)
    matched, min_iou, max_ds = 0, 1.0, 0.0
    for j in np.argsort(-theirs.scores, kind="stable"):
        cand = np.flatnonzero(~used & (ours.labels == theirs.labels[j]))
        if not cand.size:
            continue
        iou = _iou(theirs.boxes[j].astype(np.float64), ours.boxes[cand].astype(np.float64))
        ds = np.abs(ours.scores[cand] - theirs.scores[j])
        ok = (iou >= 0.99) & (ds <= 1e-3)
        if ok.any():
            k = int(np.argmax(np.where(ok, iou, -1.0)))
            used[cand[k]] = True
            matched += 1
            min_iou, max_ds = min(min_iou, float(iou[k])), max(max_ds, float(ds[k]))
    return matched, min_iou, max_ds
