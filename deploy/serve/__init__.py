"""Serving at scale on existing engines (DESIGN.md principle 8): Triton model repositories, a local
Triton server for development and tests, a load test, and DeepStream nvinfer configs. Takes an
ONNX file or an engine with its sidecar; gives a model repository (preprocess -> network ->
postprocess), a running server, a load-test report or DeepStream configs. May import: bench/,
plugins/ and what they stand on.
"""
