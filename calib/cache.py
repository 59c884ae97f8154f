"""Calibration cache: activation ranges saved with the hash of everything that produced them.

The key hashes five parts: the model graph (weights included, metadata not), the calibration
images (their bytes), the pre-process (spec.preprocess and the network input size), the
calibration method with its parameters, and the calibrator (the versions of the packages and the
source of this package's modules that compute the ranges). The output's name is no input: by
default the ranges live in a content-addressed cache folder (`--cache-dir`, else
$RETINANET_TRT_CACHE_DIR, else $XDG_CACHE_HOME/retinanet-trt or ~/.cache/retinanet-trt) under
`ranges/<key>.calib.json`, so a rerun that writes another output reuses them. A cache file the
user names (`--cache FILE`) whose key differs is refused, naming the parts that differ, so scales
computed for another model or image set are never applied silently. Node exclusions are not part
of the key: ranges are recorded for every tensor, so one cache serves any choice of quantized
nodes (the sensitivity sweep and the accuracy budget rely on this).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from retinanet_trt.errors import EnvironmentFault, UsageError
from retinanet_trt.fileio import write_json_atomic
from retinanet_trt.spec import ModelSpec
from retinanet_trt.versions import installed_versions

CACHE_FORMAT = "retinanet_trt.calib_cache/1"
KEY_PARTS = ("model", "images", "preprocess", "method", "calibrator")
CACHE_DIR_ENV = "RETINANET_TRT_CACHE_DIR"
# What computes the ranges besides the inputs: ONNX Runtime's calibrators, the image decoders and
# resizers behind the pre-process, and this package's calibration, set and pre-process code.
CALIBRATOR_DISTRIBUTIONS = ("onnxruntime", "onnx", "numpy", "pillow", "scikit-image", "opencv-python-headless")
CALIBRATOR_MODULES = (
    "retinanet_trt.calib.int8", "retinanet_trt.calib.sets", "retinanet_trt.demo.synthetic",
    "retinanet_trt.runtime.images", "retinanet_trt.runtime.preprocess", "retinanet_trt.runtime.resize",
)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def model_digest(model: onnx.ModelProto) -> str:
    """sha256 of the serialized graph: nodes, initializers and I/O, not the metadata_props."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def preprocess_digest(spec: ModelSpec, input_hw: tuple[int, int] | None, batch: int) -> str:
    """Hash of what turns an image into network input: the spec's pre-process and the input size."""
    payload = {"preprocess": spec.to_dict()["preprocess"], "input_hw": list(input_hw) if input_hw else None, "batch": batch}
    return sha256_text(json.dumps(payload, sort_keys=True))


def method_digest(method: str, params: dict[str, Any]) -> str:
    return sha256_text(json.dumps({"method": method, **params}, sort_keys=True))


def source_digest(modules: Iterable[str]) -> str:
    """sha256 over the source of `modules` (found without importing them): a development checkout's
    version number does not change when its code does."""
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin) if spec and spec.origin else None
        digest.update(name.encode())
        digest.update(origin.read_bytes() if origin and origin.is_file() else b"missing")
    return digest.hexdigest()


def calibrator_digest() -> str:
    """Hash of what computes the ranges: CALIBRATOR_DISTRIBUTIONS' versions and CALIBRATOR_MODULES' source."""
    return sha256_text(json.dumps({"versions": installed_versions(CALIBRATOR_DISTRIBUTIONS),
                                   "code": source_digest(CALIBRATOR_MODULES)}, sort_keys=True))


@dataclass
class CacheKey:
    """The five part hashes and the key over them (calibrator: this installation's by default)."""

    model: str
    images: str
    preprocess: str
    method: str
    calibrator: str = field(default_factory=lambda: calibrator_digest())

    @property
    def key(self) -> str:
        return sha256_text("|".join(getattr(self, p) for p in KEY_PARTS))

    def parts(self) -> dict[str, str]:
        return {p: getattr(self, p) for p in KEY_PARTS}


def default_cache_dir() -> Path:
    """$RETINANET_TRT_CACHE_DIR, else $XDG_CACHE_HOME/retinanet-trt, else ~/.cache/retinanet-trt."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "retinanet-trt"


def ranges_path(cache_dir: Path, key: CacheKey) -> Path:
    """Where the ranges for `key` live in a cache folder: content-addressed, whatever the output."""
    return cache_dir / "ranges" / f"{key.key}.calib.json"


def store_json(path: Path, obj: Any) -> str | None:
    """Write obj atomically at path in a cache folder (created if missing); a note instead of an
    error when that fails (a read-only or full cache folder only loses the reuse)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, obj)
    except (OSError, UsageError, EnvironmentFault) as exc:
        return f"{path} not written ({exc})"
    return None


def load_cache(path: Path, key: CacheKey) -> dict[str, Any] | None:
    """The cached ranges payload for `key`; None when no file exists.

    Raises UsageError when the file is not a calibration cache or was made for other inputs; the
    message names the parts (model, images, pre-process, method) that differ.
    """
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        fmt, stored, ranges = data["format"], data["parts"], data["ranges"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UsageError(f"calibration cache {path} is not readable ({type(exc).__name__}); delete it or choose another --cache") from exc
    if fmt != CACHE_FORMAT:
        raise UsageError(f"calibration cache {path} has format {fmt!r}, expected {CACHE_FORMAT!r}; delete it to recalibrate")
    differ = [p for p in KEY_PARTS if stored.get(p) != getattr(key, p)]
    if differ:
        why = {
            "model": "another model (the ONNX graph or weights differ)",
            "images": "other calibration images (set, --calib-images or --seed differ)",
            "preprocess": "another pre-process (spec pre-process or input size differ)",
            "method": f"another calibration method ({data.get('method', {}).get('name', '?')} with other parameters)",
            "calibrator": "another calibrator (onnxruntime, the image libraries or this package's calibration code)",
        }
        raise UsageError(
            f"calibration cache {path} was made for " + "; ".join(why[p] for p in differ)
            + "; delete it or choose another --cache to recalibrate"
        )
    return ranges


def cache_payload(key: CacheKey, ranges: dict[str, Any], method: dict[str, Any], sources: list[str]) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "key": key.key, "parts": key.parts(), "method": method, "images": sources,
            "ranges": ranges}


def save_cache(path: Path, key: CacheKey, ranges: dict[str, Any], method: dict[str, Any], sources: list[str]) -> None:
    """Write the cache atomically: format, key, part hashes, method, image list and ranges."""
    write_json_atomic(path, cache_payload(key, ranges, method, sources))
