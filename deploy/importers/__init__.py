"""Checkpoint importers: one module per source framework (torchvision, detectron2, Detectron,
maskrcnn-benchmark, yhenon, MindSpore, Caffe), safe loading, `--source auto`. Takes a checkpoint
file; gives the spec its framework implies and a state dict that model/ loads strictly
(ImportResult). May import: model/ and what it stands on.

    from retinanet_trt.importers import import_checkpoint
    result = import_checkpoint("model_final.pkl")          # or source="detectron2"
    model = result.build_model()                           # strict load into build_model(result.spec)
"""

from retinanet_trt.importers.common import ImportResult, MappingGroup, count_parameters
from retinanet_trt.importers.registry import IMPORTERS, SOURCES, detect_source, import_checkpoint

__all__ = [
    "IMPORTERS", "SOURCES", "ImportResult", "MappingGroup", "count_parameters", "detect_source", "import_checkpoint",
]
