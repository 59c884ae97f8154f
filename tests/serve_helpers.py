"""Helpers shared by the trt-serve tests."""

from __future__ import annotations

import json
from pathlib import Path

from retinanet_trt.spec.presets import get_preset
from retinanet_trt.tensorrt.build import SIDECAR_FORMAT


def fake_engine(folder: Path, end2end: bool = False, trt: str = "10.3.0.26", precision: str = "fp16") -> Path:
    """An engine file with a trt-build sidecar for the tiny preset (the bytes are never parsed: there
    is no TensorRT here), dynamic batch and H x W within one profile."""
    spec = get_preset("tiny")
    a, k = spec.head.num_anchors, spec.head.num_classes
    io_ = [{"name": "images", "mode": "input", "dtype": "float32", "shape": [-1, 3, -1, -1]}]
    if end2end:
        io_ += [{"name": "num_dets", "mode": "output", "dtype": "int32", "shape": [-1]},
                {"name": "boxes", "mode": "output", "dtype": "float32", "shape": [-1, 100, 4]},
                {"name": "scores", "mode": "output", "dtype": "float32", "shape": [-1, 100]},
                {"name": "labels", "mode": "output", "dtype": "int32", "shape": [-1, 100]}]
    else:
        io_ += [{"name": f"{kind}_p{lv}", "mode": "output", "dtype": "float32", "shape": [-1, a * c, -1, -1]}
                for kind, c in (("cls", k), ("box", 4)) for lv in spec.levels]
    engine = folder / ("e2e.engine" if end2end else "m.engine")
    engine.write_bytes(b"\0" * 64)
    sidecar = {"format": SIDECAR_FORMAT, "engine_bytes": 64, "tensorrt_version": trt, "precision": precision,
               "gpu": {"name": "NVIDIA A10", "compute_capability": "8.6"}, "options": {"version_compatible": False},
               "profiles": [{"images": [[1, 3, 128, 128], [4, 3, 256, 320], [4, 3, 320, 352]]}],
               "io": io_, "spec": spec.to_dict()}
    (folder / f"{engine.name}.json").write_text(json.dumps(sidecar))
    return engine
