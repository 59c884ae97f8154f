"""Which part of the network INT8 hurts most: quantize one group (backbone, fpn, p3..p7), or one
layer (layer_sweep, for the accuracy budget), at a time.

Each row quantizes only that group's nodes (the default exclusions stay FP32) from the same cached
ranges, and measures the raw outputs on the held-out photos against FP32, plus COCO AP when the
calibration set has annotations, in ACCURACY_ARITHMETIC (Q/DQ simulated as written). Quantization
noise of independent groups adds up roughly in power, so a group's share of the summed noise says
how much excluding it would buy.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from retinanet_trt.calib import accuracy, int8
from retinanet_trt.calib.select import groups_present
from retinanet_trt.export.naming import node_group
from retinanet_trt.runtime.backends.ort_backend import ACCURACY_ARITHMETIC, cpu_session

# Below this output SQNR the tool recommends exclusions (noise at 1% of the signal power).
TARGET_SQNR_DB = 20.0
# With annotations: a group whose INT8 alone costs this much AP (0.005 = half a point) stays FP32.
AP_LOSS = 0.005


def _noise(sqnr_db: float) -> float:
    """Noise power relative to signal power."""
    return 0.0 if math.isinf(sqnr_db) else 10 ** (-sqnr_db / 10)


def _to_db(noise: float) -> float:
    return math.inf if noise <= 0 else -10 * math.log10(noise)


def sensitivity_sweep(model: onnx.ModelProto, src: Path, ranges: dict[str, Any], method: str, excluded: list[str],
                      photos: list[np.ndarray], ref_runs: list[dict[str, np.ndarray]], evaluation: Any = None,
                      fp32_ap: float | None = None, progress: bool = True) -> dict[str, Any]:
    """{"rows": [...], "recommended_exclusions": [...], "rule": str, "estimated_sqnr_db_*": x}.

    evaluation and fp32_ap (the FP32 file's AP on it): score each row's detections too."""
    groups = [g for g in groups_present(model) if g != "other"]
    rows: list[dict[str, Any]] = []
    if evaluation is None:
        fp32_ap = None
    with tempfile.TemporaryDirectory(prefix="retinanet_trt.sens.") as tmp:
        for group in tqdm(groups, desc="sensitivity", unit="group", disable=not progress, leave=False):
            nodes = [n.name for n in model.graph.node if node_group(n.name) == group and n.name not in excluded]
            if not nodes:
                continue
            path = Path(tmp) / f"{group}.onnx"
            int8.quantize(src, path, ranges, int8.QuantizeConfig(method, list(excluded), nodes))
            cmp = accuracy.compare_runs(ref_runs, accuracy.run_all(cpu_session(path, arithmetic=ACCURACY_ARITHMETIC), photos))
            worst = min(cmp, key=lambda k: cmp[k]["sqnr_db"])
            row: dict[str, Any] = {"group": group, "nodes": len(nodes), "sqnr_db": cmp[worst]["sqnr_db"],
                                   "worst_output": worst, "cosine": cmp[worst]["cosine"]}
            if evaluation is not None and fp32_ap is not None:
                from retinanet_trt.calib.detection_map import map_scores

                row["ap"] = map_scores(path, evaluation, progress=False)["AP"]
                row["ap_lost"] = fp32_ap - row["ap"]
            rows.append(row)
    total = sum(_noise(r["sqnr_db"]) for r in rows)
    for r in rows:
        r["noise_share"] = _noise(r["sqnr_db"]) / total if total > 0 else 0.0
    return {"rows": rows, **_recommend(rows, fp32_ap)}


# The layers the accuracy budget keeps in float: the ones with weights, whose precision decides
# their kernels' speed (a Relu, Add or Resize follows the precision of what it is fused with).
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_HEAD = re.compile(r"^(cls|box)_p(\d+)$")


def detection_masks(ref_runs: list[dict[str, np.ndarray]], num_anchors: int, num_classes: int,
                    logit_floor: float) -> list[dict[str, np.ndarray]]:
    """Per run and head output, the entries detections are made of: the class logits and box deltas
    of every anchor whose best FP32 class logit exceeds logit_floor (the score threshold). Outputs
    are (N, A*K, H, W) and (N, A*4, H, W), anchor-major, as the post-process reads them."""
    masks = []
    for run in ref_runs:
        per: dict[str, np.ndarray] = {}
        for name, cls in run.items():
            m = _HEAD.match(name)
            if not m or m.group(1) != "cls" or f"box_p{m.group(2)}" not in run:
                continue
            n, _, h, w = cls.shape
            hot = cls.reshape(n, num_anchors, num_classes, h, w).max(axis=2) > logit_floor  # (N, A, H, W)
            per[name] = np.repeat(hot[:, :, None], num_classes, axis=2).reshape(cls.shape)
            per[f"box_p{m.group(2)}"] = np.repeat(hot[:, :, None], 4, axis=2).reshape(n, num_anchors * 4, h, w)
        masks.append(per)
    return masks


def masked_noise(ref_runs: list[dict[str, np.ndarray]], runs: list[dict[str, np.ndarray]],
                 masks: list[dict[str, np.ndarray]]) -> float:
    """Quantization noise on what detections are made of: for class logits and for box deltas, the
    error power over the masked entries of all runs relative to their signal power, summed."""
    total = 0.0
    for kind in ("cls", "box"):
        err = sig = 0.0
        for ref, run, mask in zip(ref_runs, runs, masks):
            for name, m in mask.items():
                if name.startswith(kind):
                    r = ref[name][m].astype(np.float64)
                    err += float(np.sum((run[name][m].astype(np.float64) - r) ** 2))
                    sig += float(np.sum(r**2))
        total += err / sig if sig > 0 else 0.0
    return total


def layer_sweep(model: onnx.ModelProto, src: Path, ranges: dict[str, Any], method: str, excluded: list[str],
                inputs: list[np.ndarray], ref_runs: list[dict[str, np.ndarray]], progress: bool = True,
                masks: list[dict[str, np.ndarray]] | None = None) -> list[dict[str, Any]]:
    """Each weighted layer (LAYER_OPS) not in `excluded` quantized alone from the same cached ranges,
    most sensitive first: {"layer", "group", "op", "sqnr_db" (worst output), "worst_output",
    "noise"}. noise: with `masks` (detection_masks), masked_noise, the error on what detections
    are made of; else the noise power summed over the raw outputs, each relative to its signal.
    Measured on `inputs` against FP32 (ref_runs), in ACCURACY_ARITHMETIC."""
    layers = [n for n in model.graph.node if n.op_type in LAYER_OPS and n.name not in excluded]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="retinanet_trt.layers.") as tmp:
        for i, node in enumerate(tqdm(layers, desc="layer sensitivity", unit="layer", disable=not progress, leave=False)):
            path = Path(tmp) / f"layer{i}.onnx"
            int8.quantize(src, path, ranges, int8.QuantizeConfig(method, list(excluded), [node.name]))
            runs = accuracy.run_all(cpu_session(path, arithmetic=ACCURACY_ARITHMETIC), inputs)
            cmp = accuracy.compare_runs(ref_runs, runs)
            worst = min(cmp, key=lambda k: cmp[k]["sqnr_db"])
            noise = masked_noise(ref_runs, runs, masks) if masks else sum(_noise(v["sqnr_db"]) for v in cmp.values())
            rows.append({"layer": node.name, "group": node_group(node.name), "op": node.op_type,
                         "sqnr_db": cmp[worst]["sqnr_db"], "worst_output": worst, "noise": noise})
            path.unlink()
    return sorted(rows, key=lambda r: -r["noise"])


def _recommend(rows: list[dict[str, Any]], fp32_ap: float | None) -> dict[str, Any]:
    """Groups to keep in FP32: by AP lost when measured, else greedily by noise until the summed
    noise estimate reaches TARGET_SQNR_DB."""
    if fp32_ap is not None:
        chosen = [r["group"] for r in sorted(rows, key=lambda r: -r["ap_lost"]) if r["ap_lost"] >= AP_LOSS]
        rule = f"groups whose INT8 alone loses >= {AP_LOSS:g} AP ({100 * AP_LOSS:g} points)"
    else:
        chosen = []
        rule = f"largest noise shares until the estimated output SQNR reaches {TARGET_SQNR_DB} dB"
    remaining = sorted(rows, key=lambda r: -_noise(r["sqnr_db"]))
    noise = sum(_noise(r["sqnr_db"]) for r in remaining)
    estimate_all = _to_db(noise)
    if fp32_ap is None:
        while remaining and _to_db(noise) < TARGET_SQNR_DB:
            top = remaining.pop(0)
            chosen.append(top["group"])
            noise -= _noise(top["sqnr_db"])
    else:
        noise -= sum(_noise(r["sqnr_db"]) for r in rows if r["group"] in chosen)
    return {"recommended_exclusions": chosen, "rule": rule, "estimated_sqnr_db_all": estimate_all,
            "estimated_sqnr_db_after": _to_db(max(noise, 0.0))}
