"""Annotated images for people: boxes, class names and scores drawn on the original image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from retinanet_trt.runtime.types import Detections

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def draw_detections(pixels: np.ndarray, dets: Detections, min_score: float = 0.3) -> Image.Image:
    """pixels (H, W, 3) uint8 RGB -> a PIL image with every detection scoring >= min_score drawn."""
    image = Image.fromarray(pixels).convert("RGB")
    canvas = ImageDraw.Draw(image)
    for box, score, label, name in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist(), dets.names):
        if score < min_score:
            continue
        colour = _PALETTE[int(label) % len(_PALETTE)]
        canvas.rectangle(box, outline=colour, width=2)
        text = f"{name} {score:.2f}"
        x, y = box[0], max(0.0, box[1] - 11)
        canvas.rectangle(canvas.textbbox((x, y), text), fill=colour)
        canvas.text((x, y), text, fill=(255, 255, 255))
    return image
