"""The torch-free runner behind `Detector`: images -> pre-process (resize, normalise, pad; or uint8
NHWC) -> a backend (ONNX Runtime, or TensorRT through tensorrt/) -> the shared NumPy
post-process (anchors, box decode, top-k, NMS) -> Detections, also as an overlapped host
pipeline. Takes an ONNX file, an engine with its sidecar, a checkpoint or "demo"; gives
detections and the time per stage. May import: tensorrt/, spec/ and plumbing; Detector reaches
model/, importers/, demo/ (the torch backend) and plugins/ (an end-to-end graph's outputs) only
inside functions, the exceptions tests/test_import_graph.py lists.
"""
