"""Score a converted (FP16 / INT8) file against its FP32 source: the accuracy half of a report.

Every session here computes in ACCURACY_ARITHMETIC (Q/DQ simulated as written, ONNX Runtime's
graph optimisations off), so a score means the same on every CPU: ORT's fused integer kernels
saturate differently with and without VNNI (17 dB vs 25 dB INT8 SQNR on the same tiny model).
The FP32 reference runs the same way, so only the conversion differs between the two sides.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import onnx

from retinanet_trt.calib import accuracy
from retinanet_trt.calib.sensitivity import sensitivity_sweep
from retinanet_trt.calib.sets import CalibImages, CalibSource
from retinanet_trt.runtime.backends.ort_backend import ACCURACY_ARITHMETIC, ARITHMETIC_LABELS, cpu_session
from retinanet_trt.spec import ModelSpec

# The report keys this module fills; a report cache stores and restores exactly these.
SCORE_KEYS = ("arithmetic", "sqnr_db", "outputs", "levels", "held_out", "map", "map_detail", "sensitivity")
ARITHMETIC = ARITHMETIC_LABELS[ACCURACY_ARITHMETIC]


def scoring_session(model: Path | bytes | onnx.ModelProto, optimized_model_path: str | None = None):  # type: ignore[no-untyped-def]
    """The CPU session every accuracy figure is computed with (see ACCURACY_ARITHMETIC);
    optimized_model_path: where ORT writes the graph it runs (tests check that Q/DQ is kept)."""
    return cpu_session(model, arithmetic=ACCURACY_ARITHMETIC, optimized_model_path=optimized_model_path)


def score(src: Path, out: Path, precision: str, *, proto: onnx.ModelProto, spec: ModelSpec,
          input_hw: tuple[int, int] | None, batch: int, source: CalibSource | None, images: CalibImages | None,
          evaluate_map: bool, eval_images: int, sensitivity: bool, ranges: dict[str, Any] | None, method: str,
          excluded: list[str], progress: bool, timings: dict[str, float],
          known_map: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """{SCORE_KEYS...}: held-out SQNR per output and level, COCO mAP when the set has annotations,
    and (INT8 with `sensitivity`) the per-group sweep. Adds held_out_s / map_s / sensitivity_s to timings.

    known_map: {"fp32": ..., precision: ...} map_scores results already measured on the same
    evaluation set for src and for the graph written to out (the accuracy budget's search)."""
    scores: dict[str, Any] = {"arithmetic": ARITHMETIC}
    t0 = time.perf_counter()
    photos, names, shrunk = accuracy.held_out_inputs(spec, input_hw, batch)
    ref_runs = accuracy.run_all(scoring_session(src), photos)
    cmp = accuracy.compare_runs(ref_runs, accuracy.run_all(scoring_session(out), photos))
    scores["sqnr_db"] = {k: v["sqnr_db"] for k, v in cmp.items()}
    scores["outputs"] = cmp
    scores["levels"] = accuracy.level_rows(cmp)
    scores["held_out"] = {"photos": names, "shrunk_to_input": shrunk}
    timings["held_out_s"] = time.perf_counter() - t0

    evaluation = None
    if source is not None and images is not None and evaluate_map:
        t0 = time.perf_counter()
        evaluation = _map_scores(src, out, precision, source, images, eval_images, progress, scores, spec,
                                 known_map or {})
        timings["map_s"] = time.perf_counter() - t0
    if precision == "int8" and sensitivity:
        t0 = time.perf_counter()
        fp32_ap = scores["map"]["fp32"] if "map" in scores else None
        scores["sensitivity"] = sensitivity_sweep(
            proto, src, ranges or {}, method, excluded, photos, ref_runs, evaluation, fp32_ap, progress)
        scores["sensitivity"]["arithmetic"] = ARITHMETIC
        timings["sensitivity_s"] = time.perf_counter() - t0
    return scores


def _map_scores(src: Path, out: Path, precision: str, source: CalibSource, images: CalibImages, eval_images: int,
                progress: bool, scores: dict[str, Any], spec: ModelSpec, known: dict[str, dict[str, Any]]) -> Any:
    """Fill scores["map"] (COCO AP as a fraction) for FP32 and the converted file; return the evaluation set."""
    from retinanet_trt.calib.detection_map import EvalSet, map_scores

    evaluation = EvalSet.for_source(source, images, eval_images)
    if evaluation is None:
        return None
    fp32 = known.get("fp32") or map_scores(src, evaluation, progress, spec=spec)
    converted = known.get(precision) or map_scores(out, evaluation, progress, spec=spec)
    scores["map"] = {"fp32": fp32["AP"], precision: converted["AP"]}
    scores["map_detail"] = {"metric": "COCO AP@[.50:.95] (a fraction, as COCO reports it)", "arithmetic": ARITHMETIC,
                            "images": evaluation.num_images, "set": evaluation.describe, "fp32": fp32,
                            precision: converted, "delta": converted["AP"] - fp32["AP"]}
    return evaluation

