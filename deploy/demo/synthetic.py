"""Synthetic shapes detection dataset: DEMO_CLASSES on textured backgrounds, deterministic by seed.

Each image holds a few filled shapes (circle, square, triangle, star, cross) of varied size,
aspect, rotation and colour, some overlapping, on a background of blotchy noise, a gradient or
stripes with fine noise on top. Later shapes occlude earlier ones, but never below
`min_visible` of an object's area, so every annotated object stays recognisable. Boxes are the
exact geometric extent of each (whole, amodal) shape in continuous pixel coordinates (pixel i
covers [i, i+1)); shapes are rendered anti-aliased by 4x supersampling.

Image i of a split is drawn from its own RNG seeded by (seed, split, i), so any image can be
regenerated alone and the splits never repeat each other.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from retinanet_trt.spec.presets import DEMO_CLASSES

_SS = 4  # supersampling factor for anti-aliased edges


@dataclass(frozen=True)
class SyntheticConfig:
    """Dataset difficulty. Sizes are the longer side of a shape's box in pixels (log-uniform)."""

    height_range: tuple[int, int] = (256, 256)
    width_range: tuple[int, int] = (256, 320)
    objects_range: tuple[int, int] = (1, 6)
    size_range: tuple[float, float] = (20.0, 120.0)
    aspect_range: tuple[float, float] = (0.75, 1.33)  # stretch of a shape before rotation
    min_visible: float = 0.7  # fraction of each object's area left uncovered by later ones
    near_prob: float = 0.35  # chance a new shape is placed touching an earlier one (overlaps)
    min_contrast: float = 70.0  # RGB distance between a shape and the local background mean


@dataclass
class SyntheticSample:
    """image (H, W, 3) uint8 RGB; boxes (M, 4) float32 x1y1x2y2; labels (M,) int64 ids 1..K."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    index: int


def category_ids() -> list[int]:
    """COCO category ids of DEMO_CLASSES: 1..K, as the tiny preset's label_map."""
    return list(range(1, len(DEMO_CLASSES) + 1))


def split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG of image `index` of `split` (crc32 so the split name maps to the same stream everywhere)."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def iter_samples(n_images: int, seed: int, split: str = "train", config: SyntheticConfig | None = None,
                 start: int = 0) -> Iterator[SyntheticSample]:
    """Yield images start .. start+n_images-1 of a split, in memory (for training loops)."""
    cfg = config or SyntheticConfig()
    for i in range(start, start + n_images):
        yield render_sample(split_rng(seed, split, i), cfg, i)


def render_sample(rng: np.random.Generator, cfg: SyntheticConfig, index: int = 0) -> SyntheticSample:
    """Draw one image and its annotations from rng."""
    h = int(rng.integers(cfg.height_range[0], cfg.height_range[1] + 1))
    w = int(rng.integers(cfg.width_range[0], cfg.width_range[1] + 1))
    canvas = _background(rng, h, w)
    owner = np.full((h, w), -1, dtype=np.int32)  # topmost object per pixel, for the occlusion rule
    areas: list[int] = []
    boxes: list[list[float]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(cfg.objects_range[0], cfg.objects_range[1] + 1))):
        placed = _place_shape(rng, cfg, owner, areas, boxes)
        if placed is None:
            continue
        label, box, patch, alpha = placed
        x0, y0 = patch
        ph, pw = alpha.shape
        region = canvas[y0 : y0 + ph, x0 : x0 + pw]
        fill = _fill(rng, region, ph, pw, cfg.min_contrast)
        a = alpha[:, :, None]
        region[...] = region * (1.0 - a) + fill * a
        owner[y0 : y0 + ph, x0 : x0 + pw][alpha >= 0.5] = len(boxes)
        areas.append(int((alpha >= 0.5).sum()))
        boxes.append(box)
        labels.append(label)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return SyntheticSample(
        image=image,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        index=index,
    )


def generate_dataset(out_dir: str | Path, n_images: int, seed: int, split: str = "val",
                     config: SyntheticConfig | None = None) -> Path:
    """Write out_dir/<split>/NNNNNN.png and out_dir/<split>.json (COCO); return the json path.

    file_name entries are relative to the json's folder, so images resolve from the json alone.
    """
    cfg = config or SyntheticConfig()
    out = Path(out_dir)
    (out / split).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for sample in iter_samples(n_images, seed, split, cfg):
        name = f"{split}/{sample.index:06d}.png"
        Image.fromarray(sample.image).save(out / name)
        image_id = sample.index + 1
        images.append({"id": image_id, "file_name": name, "height": int(sample.image.shape[0]),
                       "width": int(sample.image.shape[1])})
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    coco = {
        "info": {"description": "retinanet_trt synthetic shapes", "seed": seed, "split": split,
                 "config": asdict(cfg)},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i, "name": n, "supercategory": "shape"} for i, n in zip(category_ids(), DEMO_CLASSES, strict=True)
        ],
    }
    path = out / f"{split}.json"
    path.write_text(json.dumps(coco))
    return path


# ---------------------------------------------------------------------------------- backgrounds
def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float64 in 0..255: blotchy noise, a linear gradient or stripes, plus fine noise."""
    kind = rng.choice(["noise", "gradient", "stripes"])
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if kind == "noise":
        # Low-frequency noise: a coarse random grid upsampled bilinearly.
        cells = int(rng.integers(3, 12))
        coarse = rng.uniform(0, 1, (cells, cells)).astype(np.float32)
        t = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)
    else:
        angle = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        proj = xx * math.cos(angle) + yy * math.sin(angle)
        if kind == "gradient":
            t = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-6)
        else:
            period = rng.uniform(6, 40)
            wave = np.sin(2 * math.pi * proj / period)
            # Half of the stripe patterns are hard-edged, the others smooth.
            t = (wave > 0).astype(np.float64) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    img = c1 + (c2 - c1) * t[:, :, None]
    return img + rng.normal(0, rng.uniform(0, 12), (h, w, 3))


# ---------------------------------------------------------------------------------- shapes
def _unit_shape(rng: np.random.Generator, label: int) -> np.ndarray | None:
    """Vertices (V, 2) of a polygon around the origin, or None for the circle (an ellipse)."""
    name = DEMO_CLASSES[label - 1]
    if name == "circle":
        return None
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if name == "triangle":
        ang = np.deg2rad([90, 210, 330])
        return np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if name == "star":
        ang = np.deg2rad(90 + 36 * np.arange(10))
        radius = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=1)
    # cross: a plus sign with arms of half-width t
    t = rng.uniform(0.25, 0.4)
    return np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t],
                     [-1, -t], [-t, -t]], dtype=np.float64)


def _shape_geometry(
    rng: np.random.Generator, cfg: SyntheticConfig, label: int
) -> tuple[np.ndarray | None, float, float]:
    """(vertices around (0, 0) or None for an ellipse, box width, box height) at a random size."""
    size = math.exp(rng.uniform(math.log(cfg.size_range[0]), math.log(cfg.size_range[1])))
    aspect = math.exp(rng.uniform(math.log(cfg.aspect_range[0]), math.log(cfg.aspect_range[1])))
    verts = _unit_shape(rng, label)
    if verts is None:
        bw, bh = (size, size / aspect) if aspect >= 1 else (size * aspect, size)
        return None, bw, bh
    theta = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    verts = (verts * np.array([aspect, 1.0])) @ rot.T
    extent = verts.max(0) - verts.min(0)
    verts = (verts - (verts.max(0) + verts.min(0)) / 2) * (size / extent.max())  # box centred, long side = size
    bw, bh = verts.max(0) - verts.min(0)
    return verts, float(bw), float(bh)


def _place_shape(
    rng: np.random.Generator, cfg: SyntheticConfig, owner: np.ndarray, areas: list[int], boxes: list[list[float]]
) -> tuple[int, list[float], tuple[int, int], np.ndarray] | None:
    """Pick a shape and a position that keeps every earlier object >= min_visible; None after 20 tries.

    Returns (label, box x1y1x2y2, patch origin (x0, y0), coverage alpha (ph, pw) in 0..1).
    """
    h, w = owner.shape
    label = int(rng.integers(1, len(DEMO_CLASSES) + 1))
    verts, bw, bh = _shape_geometry(rng, cfg, label)
    for _ in range(20):
        if boxes and rng.random() < cfg.near_prob:
            # Centre the new shape on a random point of an earlier box's border, to make overlaps.
            ox1, oy1, ox2, oy2 = boxes[int(rng.integers(len(boxes)))]
            cx, cy = rng.uniform(ox1, ox2), rng.choice([oy1, oy2])
            if rng.random() < 0.5:
                cx, cy = rng.choice([ox1, ox2]), rng.uniform(oy1, oy2)
            cx = float(np.clip(cx, bw / 2, w - bw / 2))
            cy = float(np.clip(cy, bh / 2, h - bh / 2))
        else:
            cx, cy = rng.uniform(bw / 2, w - bw / 2), rng.uniform(bh / 2, h - bh / 2)
        box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
        x0, y0 = max(int(math.floor(box[0])), 0), max(int(math.floor(box[1])), 0)
        x1, y1 = min(int(math.ceil(box[2])), w), min(int(math.ceil(box[3])), h)
        alpha = _rasterize(verts, box, (x0, y0), (y1 - y0, x1 - x0))
        covered = owner[y0:y1, x0:x1][alpha >= 0.5]
        lost = np.bincount(covered[covered >= 0], minlength=len(areas))
        if any(lost_i and _visible(owner, i) - lost_i < cfg.min_visible * areas[i] for i, lost_i in enumerate(lost)):
            continue
        return label, box, (x0, y0), alpha
    return None


def _visible(owner: np.ndarray, index: int) -> int:
    return int((owner == index).sum())


def _rasterize(verts: np.ndarray | None, box: list[float], origin: tuple[int, int], hw: tuple[int, int]) -> np.ndarray:
    """Coverage (ph, pw) float in 0..1 of the shape over the patch at origin, by 4x supersampling."""
    ph, pw = hw
    x0, y0 = origin
    mask = Image.new("L", (pw * _SS, ph * _SS), 0)
    draw = ImageDraw.Draw(mask)
    # PIL puts integer coordinates at pixel centres; continuous x maps to (x - x0) * SS - 0.5.
    if verts is None:
        corners = [(box[0] - x0) * _SS - 0.5, (box[1] - y0) * _SS - 0.5, (box[2] - x0) * _SS - 0.5,
                   (box[3] - y0) * _SS - 0.5]
        draw.ellipse(corners, fill=255)
    else:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        pts = [((x + cx - x0) * _SS - 0.5, (y + cy - y0) * _SS - 0.5) for x, y in verts]
        draw.polygon(pts, fill=255)
    return np.asarray(mask.reduce(_SS), dtype=np.float64) / 255.0


def _fill(rng: np.random.Generator, region: np.ndarray, ph: int, pw: int, min_contrast: float) -> np.ndarray:
    """(ph, pw, 3) fill of a shape: a solid colour, a gradient or a noisy colour, far from the background."""
    background = region.reshape(-1, 3).mean(0)
    candidates = rng.uniform(0, 255, (8, 3))
    dist = np.linalg.norm(candidates - background, axis=1)
    good = np.flatnonzero(dist >= min_contrast)
    color = candidates[good[0]] if good.size else candidates[int(dist.argmax())]
    style = rng.random()
    if style < 0.5:
        return np.broadcast_to(color, (ph, pw, 3))
    if style < 0.8:
        # A gentle gradient: the colour shifts by up to 60 levels across the shape.
        shift = rng.uniform(-60, 60, 3)
        t = np.linspace(0, 1, pw)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, ph)[:, None, None]
        return np.clip(color + shift * t, 0, 255) * np.ones((ph, pw, 1))
    return np.clip(color + rng.normal(0, 15, (ph, pw, 3)), 0, 255)
