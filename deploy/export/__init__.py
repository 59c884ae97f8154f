"""PyTorch model -> ONNX: fold norms, fix ceil-mode pools, name nodes by level, simplify, check
parity. Takes a model/ network and its spec; gives model.onnx with the spec in its metadata
(spec/metadata.py) and a parity report against PyTorch. May import: model/ and what it stands on
(runtime/'s ONNX Runtime backend runs the parity check).

Only torch-free constants live here, so the CLI's --help need not import torch (export.pipeline does).
"""

DEFAULT_OPSET = 17
