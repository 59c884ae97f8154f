"""An accuracy budget for INT8: keep the fewest layers in float that bring the held-out loss within it.

    trt-calib m.onnx --int8 --calib demo --method entropy --max-drop 0.001   # COCO AP lost, a fraction (0.1 point)
    trt-calib m.onnx --int8 --calib photos/ --min-sqnr 25                    # worst held-out output SQNR, dB

1. The plain INT8 file (the default and --exclude exclusions) is measured against FP32: COCO AP on
   the calibration set's held-out images (the set and arithmetic the report's mAP uses) and the
   worst raw-output SQNR on the held-out photos. Within the budget, nothing more is kept.
2. Per-layer sensitivity (sensitivity.layer_sweep): each weighted layer quantized alone from the
   same cached ranges. For --max-drop the noise is measured on what detections are made of (class
   logits and box deltas of the anchors FP32 scores above the threshold) on the first
   SWEEP_IMAGES images of the mAP set; for --min-sqnr as output noise on the held-out photos.
   One layer's effect on mAP is below the noise of an mAP measurement, so mAP ranks nothing; it
   decides only whether a whole candidate file meets the budget.
3. Greedy by that ranking, re-measured: the candidates are the ranking's prefixes (the k most
   sensitive layers in float). k doubles from 1 until a file meets the budget, then bisection
   finds the shortest prefix that does; every candidate is quantized and measured in full, so
   the kept set is one that was measured to meet it (the fewest under the assumption that a
   longer prefix is never worse, which bisection relies on and which the steps table shows).

Every measurement quantizes from the cached ranges and runs in simulated Q/DQ, so the search is
deterministic: the file written with the kept layers scores what the search measured. A kept
layer computes in FP32 (the default) or, with keep_as "fp16" (--keep-as fp16), in FP16: its own
FP16 weights between two Casts (calib/fp16.layers_to_fp16), cheaper than FP32 on a GPU; a layer
whose observed values FP16 cannot hold stays FP32 even then. The search measures the files it
would write, so an FP16 keep is budgeted with FP16's own rounding. Each kept layer is reported
with its latency class (what it computes in: FP16 or FP32; TensorRT runs it with float kernels
instead of INT8 ones), its share of the network's multiply-accumulates and its sensitivity.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from retinanet_trt.calib import accuracy, fp16, int8
from retinanet_trt.calib.sensitivity import LAYER_OPS, detection_masks, layer_sweep
from retinanet_trt.calib.sets import CalibImages, CalibSource
from retinanet_trt.errors import UsageError
from retinanet_trt.export.naming import node_group
from retinanet_trt.runtime.backends.ort_backend import ACCURACY_ARITHMETIC, ARITHMETIC_LABELS, cpu_session
from retinanet_trt.spec import ModelSpec

__all__ = ["LAYER_OPS", "Budget", "search"]
DEFAULT_MAX_KEPT: int | None = None  # None: as many as the ranking has
KEEP_AS = ("fp32", "fp16")  # what a kept layer may compute in (its latency class); the first is the default


@dataclass
class Budget:
    """max_drop: COCO AP the INT8 file may lose against FP32, as a fraction (0.001 = 0.1 point);
    min_sqnr_db: the worst raw output's SQNR on the held-out photos it must reach. Either or both.
    keep_as: what a kept layer computes in, "fp32" or "fp16" (KEEP_AS)."""

    max_drop: float | None = None
    min_sqnr_db: float | None = None
    max_kept: int | None = DEFAULT_MAX_KEPT
    keep_as: str = KEEP_AS[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, precision: str, calib: str | None, evaluate_map: bool) -> None:
        """UsageError (one line) for a budget that cannot apply, before any work."""
        if precision != "int8":
            raise UsageError("--max-drop / --min-sqnr keep layers out of INT8; they apply to --int8 only")
        if self.max_drop is None and self.min_sqnr_db is None:
            raise UsageError("an accuracy budget needs --max-drop FRACTION or --min-sqnr DB")
        if self.max_drop is not None:
            if not (math.isfinite(self.max_drop) and 0 <= self.max_drop < 1):
                raise UsageError(f"--max-drop {self.max_drop}: COCO AP lost as a fraction, 0 <= x < 1 "
                                 "(0.005 = half a point)")
            if not evaluate_map:
                raise UsageError("--max-drop is measured as COCO mAP; leave out --no-map, or budget with --min-sqnr DB")
        if self.min_sqnr_db is not None and not (math.isfinite(self.min_sqnr_db) and 0 < self.min_sqnr_db < 200):
            raise UsageError(f"--min-sqnr {self.min_sqnr_db}: give a worst-output SQNR in dB, 0 < x < 200 (e.g. 25)")
        if self.max_kept is not None and not 1 <= self.max_kept <= 10_000:
            raise UsageError(f"--max-kept {self.max_kept}: give 1..10000 layers")
        if self.keep_as not in KEEP_AS:
            raise UsageError(f"--keep-as {self.keep_as!r}: choose one of {', '.join(KEEP_AS)}")

    def check_set(self, source: CalibSource) -> None:
        """--max-drop needs annotations: the demo set or a COCO json (a plain folder has none)."""
        if self.max_drop is not None and source.kind not in ("demo", "coco"):
            raise UsageError(f"--max-drop is measured as COCO mAP, and --calib {source.name} has no annotations; "
                             "give a COCO json or demo, or budget with --min-sqnr DB")

    def met(self, measured: dict[str, Any]) -> bool:
        ok = True
        if self.max_drop is not None:
            ok = ok and measured["drop"] <= self.max_drop
        if self.min_sqnr_db is not None:
            ok = ok and measured["worst_sqnr_db"] >= self.min_sqnr_db
        return ok

    def shortfall(self, measured: dict[str, Any]) -> float:
        """How far from the budget (0 when met), in budget units summed: to pick the best unmet file."""
        gap = 0.0
        if self.max_drop is not None:
            gap += max(0.0, measured["drop"] - self.max_drop) * 100  # AP points
        if self.min_sqnr_db is not None:
            gap += max(0.0, self.min_sqnr_db - measured["worst_sqnr_db"])
        return gap

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"COCO AP drop <= {self.max_drop:g} ({100 * self.max_drop:g} points)")
        if self.min_sqnr_db is not None:
            parts.append(f"worst held-out output SQNR >= {self.min_sqnr_db:g} dB")
        return " and ".join(parts)


def quantize_keeping(src: Path, out: Path, ranges: dict[str, Any], method: str, excluded: list[str], kept: list[str],
                     keep_as: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Write the INT8 file of `src` with `excluded` and `kept` out of INT8, the kept layers in
    `keep_as` (fp16: where FP16 holds them, judged on the observed peaks the calibration kept);
    return it and {kept layer: what it computes in}."""
    model = int8.quantize(src, out, ranges, int8.QuantizeConfig(method=method, exclude=excluded + kept))
    if keep_as == "fp32" or not kept:
        return model, {layer: "fp32" for layer in kept}
    classes = fp16.layers_to_fp16(model, kept, fp16.tensor_peaks(ranges))
    onnx.save(model, str(out))
    return model, classes


def layer_costs(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """{layer: {"params", "macs", "macs_share"}} for LAYER_OPS nodes with a constant weight; macs (for
    the graph's input shape) of a Conv whose output shape inference knows, else None; macs_share of
    all those layers' MACs."""
    inits = {t.name: t for t in model.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                  for v in [*inferred.graph.value_info, *inferred.graph.output]}
    except Exception:  # noqa: BLE001 - shape inference is a nicety here; costs fall back to parameters
        shapes = {}
    costs: dict[str, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = list(inits[node.input[1]].dims)
        out = shapes.get(node.output[0])
        macs = None
        if node.op_type == "Conv" and out and all(out) and len(weight) > 1:
            macs = int(np.prod(out)) * int(np.prod(weight[1:]))  # each output: Cin/groups x kh x kw
        costs[node.name] = {"params": int(np.prod(weight)), "macs": macs}
    total = sum(c["macs"] for c in costs.values() if c["macs"])
    for c in costs.values():
        c["macs_share"] = c["macs"] / total if c["macs"] and total else None
    return costs


SWEEP_IMAGES = 16  # images of the mAP set the --max-drop ranking measures noise on


def _sweep_inputs(evaluation: Any, spec: ModelSpec, input_hw: tuple[int, int] | None, batch: int) -> list[np.ndarray]:
    """The first SWEEP_IMAGES images of the mAP set, pre-processed as the runner does."""
    import dataclasses

    from retinanet_trt.runtime.images import load_image
    from retinanet_trt.runtime.preprocess import preprocess
    from retinanet_trt.scoring.evaluate import load_coco

    coco = load_coco(evaluation.annotations)
    spec = dataclasses.replace(spec, preprocess=dataclasses.replace(spec.preprocess, oversize="shrink"))
    inputs = []
    for image_id in sorted(coco.getImgIds())[:SWEEP_IMAGES]:
        path = Path(evaluation.images_dir) / coco.imgs[image_id]["file_name"]
        try:
            image = load_image(path)
        except Exception:  # noqa: BLE001 - an unreadable image is skipped here as evaluate() skips it
            continue
        inputs.append(preprocess([image] * batch, spec, input_hw).images)
    return inputs


def _logit_floor(spec: ModelSpec) -> float:
    """The class logit above which the post-process keeps a candidate (its lowest score threshold)."""
    thresh = min(spec.postprocess.score_thresh)
    if spec.postprocess.score_thresh_on == "logit":
        return float(thresh)
    p = min(max(thresh, 1e-4), 1 - 1e-4)
    return float(math.log(p / (1 - p)))


def search(src: Path, proto: onnx.ModelProto, spec: ModelSpec, ranges: dict[str, Any], method: str,
           excluded: list[str], budget: Budget, source: CalibSource | None, images: CalibImages | None,
           eval_images: int, input_hw: tuple[int, int] | None, batch: int, progress: bool = True) -> dict[str, Any]:
    """The layers to keep in float (module docstring). Returns the report's "budget" section: met,
    kept (one row per layer: latency class, cost, sensitivity), plain / final figures, every step
    measured, the per-layer ranking, and "map_scores" ({"fp32", "int8"}: the final file's COCO
    results, so the report does not score it twice)."""
    from retinanet_trt.calib.detection_map import EvalSet, map_scores

    t_start = time.perf_counter()
    photos, _, _ = accuracy.held_out_inputs(spec, input_hw, batch)
    fp32_session = cpu_session(src, arithmetic=ACCURACY_ARITHMETIC)
    ref_runs = accuracy.run_all(fp32_session, photos)
    evaluation = None
    fp32_map: dict[str, Any] | None = None
    if budget.max_drop is not None:
        evaluation = EvalSet.for_source(source, images, eval_images) if source and images else None
        if evaluation is None:
            raise UsageError(f"--max-drop is measured as COCO mAP, and --calib {source.name if source else '?'} has no "
                             "annotated images to score; budget with --min-sqnr DB")
        fp32_map = map_scores(src, evaluation, False, spec=spec)
    measured: dict[tuple[str, ...], dict[str, Any]] = {}
    results: dict[tuple[str, ...], dict[str, Any]] = {}
    steps: list[dict[str, Any]] = []

    with tempfile.TemporaryDirectory(prefix="retinanet_trt.budget.") as tmp:
        def measure(kept: list[str], why: str) -> dict[str, Any]:
            key = tuple(sorted(kept))
            if key in measured:
                return measured[key]
            path = Path(tmp) / f"candidate{len(measured)}.onnx"
            _, classes = quantize_keeping(src, path, ranges, method, excluded, list(kept), budget.keep_as)
            cmp = accuracy.compare_runs(ref_runs, accuracy.run_all(cpu_session(path, arithmetic=ACCURACY_ARITHMETIC), photos))
            worst = min(cmp, key=lambda k: cmp[k]["sqnr_db"])
            m: dict[str, Any] = {"kept": list(kept), "why": why, "worst_sqnr_db": cmp[worst]["sqnr_db"],
                                 "worst_output": worst, "classes": classes}
            if evaluation is not None and fp32_map is not None:
                scored = map_scores(path, evaluation, False, spec=spec)
                results[key] = scored
                m.update(map=scored["AP"], drop=fp32_map["AP"] - scored["AP"])
            m["met"] = budget.met(m)
            path.unlink()
            measured[key] = m
            steps.append(m)
            return m

        plain = measure([], "plain INT8")
        ranking: list[dict[str, Any]] = []
        current = plain
        if not plain["met"]:
            if evaluation is not None:  # rank by the noise on what detections are made of
                inputs = _sweep_inputs(evaluation, spec, input_hw, batch)
                sweep_ref = accuracy.run_all(fp32_session, inputs)
                masks = detection_masks(sweep_ref, spec.head.num_anchors, spec.head.num_classes, _logit_floor(spec))
                ranking = layer_sweep(proto, src, ranges, method, excluded, inputs, sweep_ref, progress, masks)
            else:
                ranking = layer_sweep(proto, src, ranges, method, excluded, photos, ref_runs, progress)
            order = [r["layer"] for r in ranking][: budget.max_kept or None]
            current = _shortest_prefix(order, measure, budget, steps)
    kept = list(current["kept"])
    costs = layer_costs(proto)
    by_layer = {r["layer"]: (i + 1, r) for i, r in enumerate(ranking)}
    rows = []
    for layer in kept:
        rank, alone = by_layer.get(layer, (None, {}))
        rows.append({
            "layer": layer, "group": node_group(layer),
            "op": next((n.op_type for n in proto.graph.node if n.name == layer), "?"),
            "latency_class": current["classes"].get(layer, "fp32"), **costs.get(layer, {"params": None, "macs": None, "macs_share": None}),
            "sensitivity_rank": rank, "int8_alone_noise": alone.get("noise"),
            "int8_alone_sqnr_db": alone.get("sqnr_db"),
        })
    section: dict[str, Any] = {
        "budget": budget.to_dict(), "describe": budget.describe(), "met": current["met"],
        "arithmetic": ARITHMETIC_LABELS[ACCURACY_ARITHMETIC],
        "plain": _figures(plain), "final": _figures(current), "kept": rows,
        "keep_as": budget.keep_as,
        "kept_latency_class": "+".join(sorted({r["latency_class"] for r in rows})) or None,
        "kept_macs_share": sum(r["macs_share"] or 0.0 for r in rows),
        "steps": [_figures(m) | {"layers_kept": len(m["kept"]), "why": m["why"]} for m in steps],
        "ranking": ranking,
        "ranking_measure": ("noise on the class logits and box deltas of anchors FP32 detects, first "
                            f"{SWEEP_IMAGES} images of the mAP set" if evaluation is not None
                            else "output noise on the held-out photos"),
        "evaluation": {"images": evaluation.num_images, "set": evaluation.describe} if evaluation else None,
        "fp32_map": fp32_map["AP"] if fp32_map else None,
    }
    if not current["met"]:
        limit = f"up to {budget.max_kept}" if budget.max_kept else f"all {len(ranking)}"
        section["note"] = (f"budget not met ({budget.describe()}) with {limit} layers kept in "
                           f"{budget.keep_as.upper()}; the file holds the closest one measured; "
                           + ("raise --max-kept, " if budget.max_kept and budget.max_kept < len(ranking) else "")
                           + "keep a group with --exclude, or try --method max")
    if fp32_map is not None:
        section["map_scores"] = {"fp32": fp32_map, "int8": results[tuple(sorted(kept))]}
    section["search_s"] = time.perf_counter() - t_start
    return section


def _shortest_prefix(order: list[str], measure: Any, budget: Budget, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The measurement of the shortest prefix of `order` that meets the budget (plain INT8 does
    not): doubling, then bisection; when even all of `order` fails, the closest file measured."""
    fail, ok = 0, None
    k = 1
    while k <= len(order):
        if measure(order[:k], f"keep the {k} most sensitive")["met"]:
            ok = k
            break
        fail = k
        if k == len(order):
            break
        k = min(2 * k, len(order))
    if ok is None:
        return min(steps, key=lambda m: (budget.shortfall(m), len(m["kept"])))
    while ok - fail > 1:
        mid = (ok + fail) // 2
        if measure(order[:mid], f"keep the {mid} most sensitive")["met"]:
            ok = mid
        else:
            fail = mid
    return measure(order[:ok], "")


def _figures(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("worst_sqnr_db", "worst_output", "map", "drop", "met") if k in m}
