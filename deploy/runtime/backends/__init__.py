"""The backends behind Detector, one interface (base.py): ONNX Runtime (CPU, CUDA, TensorRT EP) and
TensorRT engines. Takes a model file and a preprocessed batch; gives the raw per-level outputs
(cls_p*, box_p*) and their times. Part of runtime/. May import: tensorrt/, spec/ and plumbing;
optional packages are imported inside `with requires(...)` (optional.py).
"""
