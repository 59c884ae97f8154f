"""retinanet-trt: RetinaNet from a training framework's checkpoint to ONNX and TensorRT, measured at every step."""

__version__ = "0.1.0"
