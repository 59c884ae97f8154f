"""The RetinaNet model family in PyTorch: ResNet backbone, FPN, shared heads, and TorchBackend, the
reference backend. Takes a ModelSpec (and a state dict); gives an nn.Module whose outputs are the
raw per-level maps. May import: runtime/ (the backend interface) and what it stands on; torch
lives here and in export/, importers/ and demo/ only.
"""

from retinanet_trt.model.retinanet import RetinaNet, build_model, output_names

__all__ = ["RetinaNet", "build_model", "output_names"]
