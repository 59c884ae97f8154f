"""TensorRT and CUDA, the only folder that imports either: build.py (a precision ONNX -> an engine,
its JSON sidecar and layer JSON), engine.py (parse, configure, serialize, deserialize, bind,
execute, profile; the one module that imports `tensorrt`) and cuda.py (device facts, streams,
events, buffers, graphs through cuda-python; the one module that imports `cuda`). Takes an ONNX
file whose precision is already in the graph; gives an engine and a loaded engine to execute.
May import: spec/ and plumbing (engine.py loads plugin libraries through plugins/library.py, an
exception inside a function); TensorRT and cuda-python themselves are imported inside functions,
through `requires` (optional.py), so importing these modules needs neither.
"""
