"""Plain data passed between pre-process, backends and post-process."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageMeta:
    """Sizes of one image through the pre-process, all as (height, width) in pixels.

    original_hw: the decoded image; resized_hw: after the spec's resize, before padding;
    input_hw: the padded network input (the batch tensor's H, W); shrunk: the framework's resize
    did not fit a fixed network input and the image was scaled down further (resize_plan.plan_resize),
    so its detections are not exactly the framework's.
    """

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    input_hw: tuple[int, int]
    source: str = ""  # file name or "<array>", for reports
    shrunk: bool = False


@dataclass
class Batch:
    """images: (N, 3, H, W) float32 network input; metas: one ImageMeta per image."""

    images: np.ndarray
    metas: list[ImageMeta]


@dataclass
class Detections:
    """Final detections of one image in original-image pixels.

    boxes (D, 4) float32 x1, y1, x2, y2; scores (D,) float32 in 0..1, sorted descending;
    labels (D,) int64 label ids (spec.postprocess.label_map, e.g. COCO category ids);
    names: D class names.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.scores.shape[0])
