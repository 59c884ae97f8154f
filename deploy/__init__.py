"""retinanet-trt: RetinaNet from a training framework's checkpoint to ONNX and TensorRT, measured at every step.

    from retinanet_trt import Detector
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Detector", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import retinanet_trt.spec` (and every --help) does not pay for the runtime's imports.
    if name == "Detector":
        from retinanet_trt.runtime.detector import Detector

        return Detector
    raise AttributeError(f"module 'retinanet_trt' has no attribute {name!r}")
