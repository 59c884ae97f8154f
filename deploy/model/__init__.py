"""The RetinaNet model family in PyTorch: ResNet backbone, FPN, shared heads."""

from retinanet_trt.model.retinanet import RetinaNet, build_model, output_names

__all__ = ["RetinaNet", "build_model", "output_names"]
