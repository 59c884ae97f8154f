"""Serving at scale on existing engines (DESIGN.md principle 8): Triton model repositories, a local
Triton server for development and tests, a load test, and DeepStream nvinfer configs."""
