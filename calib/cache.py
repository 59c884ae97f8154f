"""Calibration cache: activation ranges saved with the hash of everything that produced them.

The key hashes four parts: the model graph (weights included, metadata not), the calibration
images (their bytes), the pre-process (spec.preprocess and the network input size) and the
calibration method with its parameters. A cache whose key differs is refused, naming the parts
that differ, so scales computed for another model or image set are never applied silently.
Node exclusions are not part of the key: ranges are recorded for every tensor, so one cache
serves any choice of quantized nodes (the sensitivity sweep relies on this).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import write_json_atomic
from retinanet_trt.spec import ModelSpec

CACHE_FORMAT = "retinanet_trt.calib_cache/1"
KEY_PARTS = ("model", "images", "preprocess", "method")


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


@dataclass
class CacheKey:
    """The four part hashes and the key over them."""

    model: str
    images: str
    preprocess: str
    method: str

    @property
    def key(self) -> str:
        return sha256_text("|".join(getattr(self, p) for p in KEY_PARTS))

    def parts(self) -> dict[str, str]:
        return {p: getattr(self, p) for p in KEY_PARTS}


def default_cache_path(out_onnx: Path) -> Path:
    """`model.int8.onnx` -> `model.int8.calib.json`, beside the output."""
    return out_onnx.with_name(out_onnx.stem + ".calib.json")


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
    except (OSError, ValueError, KeyError, TypeError) as exc:
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
        }
        raise UsageError(
            f"calibration cache {path} was made for " + "; ".join(why[p] for p in differ)
            + "; delete it or choose another --cache to recalibrate"
        )
    return ranges


def save_cache(path: Path, key: CacheKey, ranges: dict[str, Any], method: dict[str, Any], sources: list[str]) -> None:
    """Write the cache atomically: format, key, part hashes, method, image list and ranges."""
    write_json_atomic(path, {
        "format": CACHE_FORMAT,
        "key": key.key,
        "parts": key.parts(),
        "method": method,
        "images": sources,
        "ranges": ranges,
    })
