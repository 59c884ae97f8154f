"""The PyTorch reference backend: our model from a checkpoint, a preset or the bundled demo."""

from __future__ import annotations

import time

import numpy as np
import torch

from retinanet_trt.model.retinanet import RetinaNet, output_names
from retinanet_trt.runtime.backends.base import StageTimes
from retinanet_trt.spec import ModelSpec


class TorchBackend:
    """images (N, 3, H, W) float32 -> raw head outputs, computed by PyTorch on the CPU (or CUDA)."""

    name = "torch"

    def __init__(self, model: RetinaNet, spec: ModelSpec, device: str = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.names = output_names(spec)
        self.fixed_input_hw: tuple[int, int] | None = None
        self.last_times = StageTimes()

    @torch.no_grad()
    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        t1 = time.perf_counter()
        outs = self.model(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        result = {n: t.cpu().numpy() for n, t in zip(self.names, outs)}
        t3 = time.perf_counter()
        self.last_times = StageTimes(h2d_ms=(t1 - t0) * 1e3, compute_ms=(t2 - t1) * 1e3, d2h_ms=(t3 - t2) * 1e3)
        return result

    def close(self) -> None:
        pass
