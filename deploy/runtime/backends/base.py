"""The seam every inference backend plugs into: raw head outputs from a preprocessed batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from retinanet_trt.spec import ModelSpec


@dataclass
class StageTimes:
    """Milliseconds spent in the last `run` call, by part (H2D/D2H are 0 on CPU backends)."""

    h2d_ms: float = 0.0
    compute_ms: float = 0.0
    d2h_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    """images (N, 3, H, W) float32, preprocessed by runtime.preprocess -> {output name: array}.

    Outputs are the raw per-level heads cls_p{l} (N, A*K, H_l, W_l) and box_p{l} (N, A*4, H_l, W_l),
    or, for end-to-end models (plugins/), num_dets (N,), boxes (N, D, 4), scores (N, D), labels (N, D).
    """

    name: str
    spec: ModelSpec
    last_times: StageTimes

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...
