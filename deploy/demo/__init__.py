"""The bundled demo: a `tiny` RetinaNet trained on the synthetic shapes dataset (see train.py), and
the dataset's generator (synthetic.py, torch-free: trt-eval --demo and the calibration sets
render it). Takes nothing; gives the demo checkpoint (spec + weights) and COCO-style image sets.
May import: model/ and what it stands on.

The checkpoint is {"spec": spec JSON, "state_dict": tensors, "train": training and val-mAP info},
readable with torch.load(weights_only=True); its spec is the one it was trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from retinanet_trt.errors import UsageError
from retinanet_trt.spec import ModelSpec

if TYPE_CHECKING:  # torch is imported only when the demo is loaded
    from retinanet_trt.model import RetinaNet

DEMO_CHECKPOINT = Path(__file__).with_name("demo_tiny.pt")


def load_demo(path: str | Path = DEMO_CHECKPOINT) -> tuple[ModelSpec, RetinaNet]:
    """(spec, model in eval mode) from the demo checkpoint (or another file in its format)."""
    import torch

    from retinanet_trt.model import build_model

    path = Path(path)
    if not path.exists():
        raise UsageError(f"demo checkpoint {path} is missing; train it with `python -m retinanet_trt.demo.train`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    spec = ModelSpec.from_json(ckpt["spec"])
    model = build_model(spec)
    model.load_state_dict(ckpt["state_dict"])
    return spec, model.eval()
