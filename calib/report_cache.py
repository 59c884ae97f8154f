"""Accuracy-report cache: a rerun of trt-calib with the same inputs reuses the scores, not only the ranges.

Scoring (held-out SQNR, COCO mAP, the sensitivity sweep, the accuracy budget's search) is most of
a calibration run once the ranges are cached, so the report is stored under a key over everything
that determines it, content-addressed in the cache folder (`reports/<key>.report.json`: a rerun
to another output reuses it), or beside a ranges file the user names (`--cache m.calib.json` ->
`m.calib.report.json`, one entry). The key covers:

- the source file's bytes (graph, weights and the spec in its metadata: pre- and post-process),
- the calibration set (images' digest, count, seed, set name and kind, image root), the mAP set
  (COCO annotations and the scored images' bytes), the method with its parameters,
- the options (precision, exclusions incl. the default one, eval images, mAP on/off, sensitivity,
  the accuracy budget),
- the arithmetic scores are computed in, the versions of the packages that affect them, and a hash
  of this package's own conversion and scoring code (a development checkout's version number
  does not change when that code does).

The entry also records the output file's sha256: scores are reused only for those exact bytes,
so a changed or replaced output is scored again. Any other change recomputes, and the report
says which parts differed from the last report for the same output (a small pointer per output
path, `last/`, remembers its parts). A cache that cannot be read is ignored with a note, never
an error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from retinanet_trt.calib.cache import sha256_text, source_digest, store_json
from retinanet_trt.versions import installed_versions

REPORT_CACHE_FORMAT = "retinanet_trt.calib_report_cache/1"
# Distributions whose versions can change a score: the converters, the runtime, the mAP code,
# and the image libraries behind the held-out photos, the demo sets and the pre-process.
SCORE_DISTRIBUTIONS = ("retinanet-trt", "onnx", "onnxruntime", "onnxconverter-common", "numpy", "pycocotools",
                       "scikit-image", "pillow", "opencv-python-headless")
# Modules whose code decides the converted file or its scores.
SCORE_MODULES = (
    "retinanet_trt.calib.accuracy", "retinanet_trt.calib.budget", "retinanet_trt.calib.convert",
    "retinanet_trt.calib.detection_map", "retinanet_trt.calib.fp16", "retinanet_trt.calib.int8",
    "retinanet_trt.calib.lint", "retinanet_trt.calib.placement", "retinanet_trt.calib.scoring",
    "retinanet_trt.spec.metadata",
    "retinanet_trt.calib.select", "retinanet_trt.calib.sensitivity", "retinanet_trt.calib.sets",
    "retinanet_trt.demo.synthetic", "retinanet_trt.scoring.evaluate", "retinanet_trt.export.parity",
    "retinanet_trt.runtime.backends.ort_backend", "retinanet_trt.runtime.images",
    "retinanet_trt.runtime.postprocess", "retinanet_trt.runtime.preprocess",
)


def report_cache_path(ranges_cache: Path) -> Path:
    """`m.int8.calib.json` -> `m.int8.calib.report.json`; `m.calib` -> `m.calib.report.json`."""
    stem = ranges_cache.name[: -len(".json")] if ranges_cache.name.endswith(".json") else ranges_cache.name
    return ranges_cache.with_name(stem + ".report.json")


def score_versions() -> dict[str, str]:
    """Versions of SCORE_DISTRIBUTIONS that are installed."""
    return installed_versions(SCORE_DISTRIBUTIONS)


def code_digest() -> str:
    """sha256 over the source of SCORE_MODULES (found without importing them)."""
    return source_digest(SCORE_MODULES)


def report_key_parts(**parts: Any) -> dict[str, str]:
    """Each named input hashed on its own (JSON, sorted keys), so a mismatch can be named."""
    return {name: sha256_text(json.dumps(value, sort_keys=True, default=str)) for name, value in parts.items()}


def _key(parts: dict[str, str]) -> str:
    return sha256_text("|".join(f"{k}={parts[k]}" for k in sorted(parts)))


def entry_path(cache_dir: Path, parts: dict[str, str]) -> Path:
    """The report cache for `parts` in a cache folder: content-addressed, whatever the output's name."""
    return cache_dir / "reports" / f"{_key(parts)}.report.json"


def _last_path(cache_dir: Path, out: Path) -> Path:
    return cache_dir / "last" / f"{sha256_text(str(out.resolve()))}.json"


def changed_note(cache_dir: Path, out: Path, parts: dict[str, str]) -> str | None:
    """For a report not in the cache: which parts changed since the last report for `out`, if any."""
    try:
        last = json.loads(_last_path(cache_dir, out).read_text())["parts"]
        differ = sorted(k for k in set(parts) | set(last) if parts.get(k) != last.get(k))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    return f"inputs changed since the last report for {out} ({', '.join(differ)}); re-scored" if differ else None


def remember(cache_dir: Path, out: Path, parts: dict[str, str]) -> None:
    """Record `parts` as the last report's for `out` (best effort: only the note needs it)."""
    store_json(_last_path(cache_dir, out), {"output": str(out.resolve()), "parts": parts})


def load_entry(path: Path, parts: dict[str, str]) -> tuple[dict[str, Any] | None, str | None]:
    """(entry, note): the stored entry when its key matches `parts`, else None with a note saying
    why (other inputs, naming them; or an unreadable file). No file: (None, None)."""
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_text())
        if data["format"] != REPORT_CACHE_FORMAT:
            return None, f"report cache {path} has format {data['format']!r}; re-scored"
        stored, entry = data["parts"], data["entry"]
        _check_entry(stored, entry)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        return None, f"report cache {path} is not readable ({type(exc).__name__}); ignored and re-scored"
    differ = sorted(k for k in set(parts) | set(stored) if parts.get(k) != stored.get(k))
    if differ:
        return None, f"inputs changed since the cached report ({', '.join(differ)}); re-scored"
    return entry, None


# What a reused report needs from an entry (the CLI prints them); anything less is a damaged cache.
_NEEDED = {"conversion": ("exclusions", "lint"), "scores": ("arithmetic", "sqnr_db", "outputs", "levels", "held_out")}


def _check_entry(parts: Any, entry: Any) -> None:
    """TypeError / KeyError unless the stored parts and entry have the shapes a reuse relies on."""
    if not isinstance(parts, dict) or not isinstance(entry, dict) or not isinstance(entry["output_sha256"], str):
        raise TypeError("malformed entry")
    for section, keys in _NEEDED.items():
        if not isinstance(entry[section], dict):
            raise TypeError(f"{section} is not an object")
        for key in keys:
            entry[section][key]  # noqa: B018 (KeyError when missing)


def save_entry(path: Path, parts: dict[str, str], output_sha256: str, conversion: dict[str, Any],
               scores: dict[str, Any], times_s: dict[str, float]) -> str | None:
    """Write the entry atomically; a note instead of an error when the folder is not writable
    (a read-only cache still serves its ranges; only the report reuse is lost)."""
    note = store_json(path, {
        "format": REPORT_CACHE_FORMAT,
        "key": _key(parts),
        "parts": parts,
        "entry": {"output_sha256": output_sha256, "scored_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "times_s": times_s, "conversion": conversion, "scores": scores},
    })
    return f"report cache {note}" if note else None
