"""The importer registry, `--source auto` detection and `import_checkpoint`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retinanet_trt.errors import UsageError
from retinanet_trt.importers import caffe, detectron, detectron2, maskrcnn_benchmark, mindspore, torchvision, yhenon
from retinanet_trt.importers.common import Importer, ImportResult, is_tensor, listing
from retinanet_trt.importers.safe_load import load_checkpoint_file

IMPORTERS: dict[str, Importer] = {
    imp.name: imp
    for imp in (
        torchvision.IMPORTER,
        detectron2.IMPORTER,
        maskrcnn_benchmark.IMPORTER,
        yhenon.IMPORTER,
        detectron.IMPORTER,
        mindspore.IMPORTER,
    )
}
SOURCES: list[str] = ["auto", *IMPORTERS, caffe.NAME]

# Below this share of keys named the framework's way, a checkpoint is not that framework's.
_MIN_SHARE = 0.5


def extract_tensors(obj: Any) -> tuple[dict[str, Any], list[str]]:
    """The name -> tensor dict inside a loaded checkpoint, and notes on how it was found.

    Unwraps {"blobs": ...} (Detectron), {"model": ...} (detectron2, maskrcnn-benchmark) and
    {"state_dict": ...}, and strips a "module." prefix (DataParallel) when every key has one.
    """
    notes: list[str] = []
    if not isinstance(obj, dict):
        raise UsageError(f"holds a {type(obj).__name__}, not a dict of named tensors")
    for container in ("blobs", "model", "state_dict"):
        inner = obj.get(container)
        if isinstance(inner, dict):
            others = [str(k) for k in obj if k != container]
            notes.append(f"tensors under {container!r}" + (f" (also in the file: {listing(others)})" if others else ""))
            obj = inner
            break
    tensors = {str(k): v for k, v in obj.items()}
    if not any(is_tensor(v) for v in tensors.values()):
        raise UsageError(f"holds no tensors (top-level keys: {listing(sorted(tensors)) or 'none'})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
        notes.append("stripped the 'module.' prefix (a DataParallel checkpoint)")
    return tensors, notes


def detect_source(keys: list[str]) -> tuple[Importer, str]:
    """The importer whose key names account for the most keys, and a sentence saying so."""
    scores = sorted(((imp.count_known(keys), imp.name) for imp in IMPORTERS.values()), reverse=True)
    (best, name), (second, second_name) = scores[0], scores[1]
    if best < _MIN_SHARE * len(keys):
        raise UsageError(
            f"could not tell which framework wrote it: none of {', '.join(IMPORTERS)} names most of its "
            f"{len(keys)} keys (best: {name}, {best}); keys look like {listing(keys, 4)}; "
            "pass --source NAME if you know it"
        )
    return IMPORTERS[name], (
        f"auto-detected source {name} ({IMPORTERS[name].title}): {best} of {len(keys)} keys match its names "
        f"(next best {second_name}: {second})"
    )


def import_checkpoint(path: str | Path, source: str = "auto", prototxt: str | Path | None = None) -> ImportResult:
    """Read a checkpoint safely and convert it to our spec and state dict.

    path: a torchvision / maskrcnn-benchmark / yhenon ``.pth``/``.pt``, a detectron2 ``.pkl`` or
    ``.pth``, a Detectron ``.pkl``, a MindSpore ``.ckpt`` or ``.safetensors`` (any framework's names
    in safetensors work too), or a Caffe ``.caffemodel`` with its ``.prototxt`` (`prototxt`, or the
    file beside it with the same stem); source: "auto" (pick from the key names or the file format
    and say so in result.notes) or one of SOURCES. The returned state_dict loads into
    ``build_model(result.spec)`` with strict=True (see ImportResult.build_model).
    Raises UsageError for unsafe, encrypted, truncated or corrupt files, unknown or mismatched
    frameworks and missing, unexpected or wrong-shaped tensors.
    """
    if source not in SOURCES:
        raise UsageError(f"unknown --source {source!r}; choose one of: {', '.join(SOURCES)}")
    loaded = load_checkpoint_file(path)
    if loaded.kind == "caffe" or source == caffe.NAME:
        if loaded.kind != "caffe":
            raise UsageError(f"{path} is not a Caffe .caffemodel (binary protobuf); try --source auto")
        return caffe.import_caffe(Path(path), prototxt)
    if prototxt is not None:
        raise UsageError(f"--prototxt goes with a Caffe .caffemodel; {path} is a {loaded.kind} checkpoint")
    try:
        tensors, notes = extract_tensors(loaded.obj)
    except UsageError as exc:
        raise UsageError(f"{path} {exc}") from None
    notes = [*loaded.notes, *notes]
    keys = list(tensors)
    try:
        if source == "auto":
            importer, picked = detect_source(keys)
            notes.insert(0, picked)
        else:
            importer = IMPORTERS[source]
            known = importer.count_known(keys)
            if known < _MIN_SHARE * len(keys):
                guess = max(IMPORTERS.values(), key=lambda imp: imp.count_known(keys))
                unknown = [k for k in keys if importer.target(k) is None and importer.ignore_rule(k) is None]
                raise UsageError(
                    f"does not look like a {source} checkpoint: only {known} of {len(keys)} keys have {source} names "
                    f"(e.g. not: {listing(unknown, 3)}); its names fit {guess.name} best "
                    f"({guess.count_known(keys)} of {len(keys)}): try --source {guess.name} or --source auto"
                )
            notes.insert(0, f"source {source} as given: {known} of {len(keys)} keys match its names")
        return importer.convert(tensors, notes)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
