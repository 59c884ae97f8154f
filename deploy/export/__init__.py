"""PyTorch model -> ONNX: fold norms, fix ceil-mode pools, name nodes by level, simplify, check parity.

Only torch-free constants live here, so the CLI's --help need not import torch (export.pipeline does).
"""

DEFAULT_OPSET = 17
