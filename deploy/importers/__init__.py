"""Checkpoint importers: one module per source framework, safe loading, `--source auto`.

    from retinanet_trt.importers import import_checkpoint
    result = import_checkpoint("model_final.pkl")          # or source="detectron2"
    model = result.build_model()                           # strict load into build_model(result.spec)
"""

from retinanet_trt.importers.common import ImportResult, MappingGroup, count_parameters
from retinanet_trt.importers.registry import IMPORTERS, SOURCES, detect_source, import_checkpoint

__all__ = [
    "IMPORTERS", "SOURCES", "ImportResult", "MappingGroup", "count_parameters", "detect_source", "import_checkpoint",
]
