"""What a model is: the spec dataclasses (backbone, FPN, head, anchors, box coder, pre- and
post-processing, labels), their checks, `--set` overrides, the presets, COCO's label tables and
the spec stored inside an ONNX file (metadata.py). Takes a preset name, a JSON spec or an ONNX
file; gives a checked ModelSpec, the one object every later stage reads. May import: plumbing
only (and onnx, for the metadata).
"""

from retinanet_trt.spec.model import (
    FPN_UPSAMPLES,
    OVERSIZE_RULES,
    RESIZE_IMPLS,
    SCORE_KINDS,
    SPEC_VERSION,
    STEM_POOLS,
    AnchorSpec,
    BackboneSpec,
    BoxCoderSpec,
    FPNSpec,
    HeadSpec,
    ModelSpec,
    NormSpec,
    PostprocessSpec,
    PreprocessSpec,
)

__all__ = [
    "AnchorSpec", "BackboneSpec", "BoxCoderSpec", "FPNSpec", "FPN_UPSAMPLES", "HeadSpec", "ModelSpec",
    "NormSpec", "OVERSIZE_RULES", "PostprocessSpec", "PreprocessSpec", "RESIZE_IMPLS", "SCORE_KINDS",
    "SPEC_VERSION", "STEM_POOLS",
]
