"""In-graph post-process (plugins/end2end.py, ONNX Runtime CPU) vs the NumPy post-process, one run.

    python benchmarks/postprocess_ingraph.py --json benchmarks/results/postprocess_ingraph.json

Timing: per image (batch 1), on the same raw head outputs, warm-up then alternating iterations:
`numpy` is runtime.postprocess; `in_graph` is the post-process graph alone (postprocess_model) in
ONNX Runtime plus detections_from_end2end. Workloads: the bundled demo on synthetic val images
(real outputs of the trained tiny model) and retinanet_r50_fpn's shapes at 800x1344 with the
busy synthetic outputs of benchmarks/postprocess.py (80 classes, 12 M scores at P3). For the
demo also the whole model: plain ONNX + NumPy vs the end-to-end ONNX.

Equivalence: same detections (count; label, box within 1e-3, score within 1e-5) on the demo val
images and on retinanet_r50_fpn with random weights on photos (whole models in ONNX Runtime).
Accuracy: demo COCO mAP with each, on the synthetic val set, for the demo's own conventions and
for the other frameworks' conventions that standard ONNX cannot express exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from postprocess import synthetic_outputs  # benchmarks/postprocess.py: busy-image outputs

from retinanet_trt.demo import DEMO_CHECKPOINT
from retinanet_trt.export.pipeline import ExportOptions, export_onnx
from retinanet_trt.plugins.end2end import (
    OUTPUTS,
    add_end2end,
    check_against_reference,
    compare_detections,
    convention_report,
    detections_from_end2end,
    postprocess_model,
)
from retinanet_trt.runtime.backends.ort_backend import cpu_session
from retinanet_trt.runtime.postprocess import postprocess
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.runtime.resize_plan import default_input_hw
from retinanet_trt.runtime.types import ImageMeta
from retinanet_trt.scoring.evaluate import coco_map, detections_to_coco, load_coco
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.presets import get_preset
from retinanet_trt.versions import package_versions


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"median_ms": statistics.median(ordered), "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], "samples": len(ordered)}


def time_pair(a: Any, b: Any, cases: list[Any], iters: int, warmup: int) -> tuple[list[float], list[float]]:
    """Per-case milliseconds of a(case) and b(case), alternated so load drifts hit both alike."""
    for _ in range(warmup):
        for case in cases:
            a(case)
            b(case)
    ta, tb = [], []
    for _ in range(iters):
        for case in cases:
            t0 = time.perf_counter()
            a(case)
            t1 = time.perf_counter()
            b(case)
            t2 = time.perf_counter()
            ta.append((t1 - t0) * 1e3)
            tb.append((t2 - t1) * 1e3)
    return ta, tb


def compare_postprocess(spec: ModelSpec, cases: list[tuple[dict[str, np.ndarray], list[ImageMeta]]], threads: int,
                        iters: int, warmup: int) -> dict[str, Any]:
    """Time and check NumPy vs the post-process graph on (raw outputs, metas) cases of one input size."""
    raw0, metas0 = cases[0]
    feature_hws = [tuple(raw0[f"cls_p{lv}"].shape[2:]) for lv in spec.levels]
    graph = cpu_session(postprocess_model(spec, metas0[0].input_hw, feature_hws), threads)  # type: ignore[arg-type]

    def in_graph(case: tuple[dict[str, np.ndarray], list[ImageMeta]]) -> list[Any]:
        raw, metas = case
        out = dict(zip(OUTPUTS, graph.run(list(OUTPUTS), raw), strict=True))
        return detections_from_end2end(out, spec, metas)

    def numpy_ref(case: tuple[dict[str, np.ndarray], list[ImageMeta]]) -> list[Any]:
        return postprocess(case[0], spec, case[1])

    checks = [compare_detections(numpy_ref(c), in_graph(c)) for c in cases]
    t_np, t_graph = time_pair(numpy_ref, in_graph, cases, iters, warmup)
    np_s, graph_s = summary(t_np), summary(t_graph)
    return {
        "images": len(cases), "input_hw": list(metas0[0].input_hw), "classes": spec.head.num_classes,
        "scores_per_image": int(sum(raw0[f"cls_p{lv}"][0].size for lv in spec.levels)),
        "numpy": np_s, "in_graph": graph_s, "ratio_in_graph_over_numpy": graph_s["median_ms"] / np_s["median_ms"],
        "same_detections": all(c["passed"] for c in checks), "detections": sum(c["detections"] for c in checks),
        "max_box_diff": max(c["max_box_diff"] for c in checks),
    }


def demo_section(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The trained demo: timing on its real outputs, whole-model timing, equivalence, mAP."""
    from retinanet_trt.demo import load_demo
    from retinanet_trt.demo.synthetic import generate_dataset

    if not Path(args.demo).exists():
        return {"skipped": f"{args.demo} is missing (train it with python -m retinanet_trt.demo.train)"}
    spec, model = load_demo(args.demo)
    input_hw = default_input_hw(spec)
    plain_path = work / "demo.onnx"
    export_onnx(model, spec, plain_path, ExportOptions(input_hw=input_hw))
    plain = onnx.load(plain_path)
    e2e, report = add_end2end(plain)
    e2e_path = work / "demo_e2e.onnx"
    onnx.save(e2e, e2e_path)

    coco_json = generate_dataset(work / "val", args.val_images, seed=args.val_seed, split="val")
    coco = load_coco(coco_json)
    plain_s, e2e_s = cpu_session(plain_path, args.threads), cpu_session(e2e_path, args.threads)
    names = [o.name for o in plain_s.get_outputs()]
    cases, e2e_cases = [], []
    for image_id in sorted(coco.getImgIds()):
        batch = preprocess([coco_json.parent / coco.imgs[image_id]["file_name"]], spec, input_hw=input_hw)
        raw = dict(zip(names, plain_s.run(names, {"images": batch.images}), strict=True))
        cases.append((raw, batch.metas))
        e2e_cases.append((batch.images, batch.metas))

    timing = compare_postprocess(spec, cases[: args.timing_images], args.threads, args.iters, args.warmup)

    def whole_numpy(case: tuple[np.ndarray, list[ImageMeta]]) -> Any:
        return postprocess(dict(zip(names, plain_s.run(names, {"images": case[0]}), strict=True)), spec, case[1])

    def whole_e2e(case: tuple[np.ndarray, list[ImageMeta]]) -> Any:
        out = dict(zip(OUTPUTS, e2e_s.run(list(OUTPUTS), {"images": case[0]}), strict=True))
        return detections_from_end2end(out, spec, case[1])

    subset = e2e_cases[: args.timing_images]
    t_np, t_e2e = time_pair(whole_numpy, whole_e2e, subset, max(3, args.iters // 3), 1)
    whole = {"plain_onnx_plus_numpy": summary(t_np), "end2end_onnx": summary(t_e2e)}
    whole["ratio_end2end_over_plain"] = whole["end2end_onnx"]["median_ms"] / whole["plain_onnx_plus_numpy"]["median_ms"]

    # Equivalence and mAP of the whole end-to-end model against plain + NumPy, every val image.
    ref_dets = [whole_numpy(c)[0] for c in e2e_cases]
    e2e_dets = [whole_e2e(c)[0] for c in e2e_cases]
    image_ids = sorted(coco.getImgIds())
    equivalence = compare_detections(ref_dets, e2e_dets)
    equivalence.pop("images")

    def mean_ap(dets: list[Any]) -> float:
        results = [r for d, i in zip(dets, image_ids, strict=True) for r in detections_to_coco(d, i)]
        return float(coco_map(coco, results)["AP"])

    maps = {"demo_conventions": {"numpy": mean_ap(ref_dets), "end2end_onnx": mean_ap(e2e_dets)}}
    # The conventions standard ONNX cannot express exactly, applied to the demo's outputs: NumPy
    # with the convention vs the post-process graph with it (same raw maps).
    for name, variant in convention_variants(spec).items():
        feature_hws = [tuple(cases[0][0][f"cls_p{lv}"].shape[2:]) for lv in variant.levels]
        graph = cpu_session(postprocess_model(variant, input_hw, feature_hws), args.threads)  # type: ignore[arg-type]
        ref_v, got_v = [], []
        for raw, metas in cases:
            ref_v += postprocess(raw, variant, metas)
            out = dict(zip(OUTPUTS, graph.run(list(OUTPUTS), raw), strict=True))
            got_v += detections_from_end2end(out, variant, metas)
        report_v = convention_report(variant, "onnx", "constant", feature_hws)  # type: ignore[arg-type]
        inexact = [c["name"] for c in report_v["conventions"] if not c["exact"]]
        maps[name] = {"numpy": mean_ap(ref_v), "in_graph": mean_ap(got_v), "inexact_conventions": inexact,
                      "images_with_different_detections": sum(
                          1 for r in compare_detections(ref_v, got_v)["images"] if r["unmatched"] or
                          r["reference"] != r["end2end"])}
    for entry in maps.values():
        got = entry.get("end2end_onnx", entry.get("in_graph"))
        entry["ap_difference"] = got - entry["numpy"]
    return {"checkpoint": str(args.demo), "input_hw": list(input_hw), "val_images": len(cases), "val_seed": args.val_seed,
            "postprocess_timing": timing, "whole_model_timing": whole, "equivalence": equivalence,
            "map": maps, "inexact_conventions": [c for c in report["conventions"] if not c["exact"]]}


def convention_variants(spec: ModelSpec) -> dict[str, ModelSpec]:
    """The demo spec with each framework convention the graph can only approximate."""
    variants = {}
    for name, clip in (("clip_resized_torchvision", "resized"), ("clip_original_minus1_detectron", "original_minus1")):
        v = ModelSpec.from_dict(spec.to_dict())
        v.postprocess.clip = clip
        variants[name] = v
    legacy = ModelSpec.from_dict(spec.to_dict())
    legacy.postprocess.nms_rule, legacy.postprocess.nms_plus_one = "ge", True
    legacy.box_coder.plus_one = True
    variants["ge_plus_one_maskrcnn_benchmark"] = legacy
    return variants


def r50_busy_section(args: argparse.Namespace) -> dict[str, Any]:
    """retinanet_r50_fpn shapes at full size with busy synthetic outputs (no network run)."""
    spec = get_preset("retinanet_r50_fpn")
    hw = (args.r50_height, args.r50_width)
    cases = []
    for seed in range(args.r50_images):
        raw = synthetic_outputs(spec, 1, hw, args.objects, seed)
        cases.append((raw, [ImageMeta(original_hw=(hw[0] * 3 // 4, hw[1] * 3 // 4), resized_hw=hw, input_hw=hw)]))
    return compare_postprocess(spec, cases, args.threads, args.iters, args.warmup)


def r50_random_section(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """retinanet_r50_fpn with random weights, whole models in ONNX Runtime, on photos."""
    import torch
    from skimage import data

    from retinanet_trt.model import build_model

    spec = get_preset("retinanet_r50_fpn")
    hw = (args.r50_height, args.r50_width)
    plain_path = work / "r50.onnx"
    torch.set_num_threads(args.threads)
    export_onnx(build_model(spec, seed=0), spec, plain_path, ExportOptions(input_hw=hw))
    plain = onnx.load(plain_path)
    # Random heads score every anchor near the 0.01 prior: at 0.05 nothing would pass.
    check_spec = ModelSpec.from_dict(spec.to_dict())
    check_spec.postprocess.score_thresh = [args.r50_thresh] * len(spec.levels)
    e2e, _ = add_end2end(plain, spec=check_spec)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    results = []
    for photo in photos:
        batch = preprocess([photo], check_spec, input_hw=hw)
        results.append(check_against_reference(plain, e2e, batch.images, batch.metas))
    return {"input_hw": list(hw), "score_thresh": args.r50_thresh, "photos": len(photos),
            "same_detections": all(r["passed"] for r in results),
            "detections_per_photo": [r["detections"] for r in results],
            "max_box_diff": max(r["max_box_diff"] for r in results)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (NumPy runs on one)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--val-images", type=int, default=200, help="demo synthetic val images (equivalence, mAP)")
    parser.add_argument("--val-seed", type=int, default=2024)
    parser.add_argument("--timing-images", type=int, default=10, help="demo images in the timing loop")
    parser.add_argument("--r50-height", type=int, default=800)
    parser.add_argument("--r50-width", type=int, default=1344)
    parser.add_argument("--r50-images", type=int, default=3, help="busy synthetic R50 output sets in the timing loop")
    parser.add_argument("--objects", type=int, default=12, help="objects per level in the busy synthetic outputs")
    parser.add_argument("--r50-thresh", type=float, default=0.02, help="score threshold for the random-weight R50 check")
    parser.add_argument("--skip-r50-model", action="store_true", help="skip exporting R50 (the slowest part)")
    parser.add_argument("--demo", default=str(DEMO_CHECKPOINT), help="demo checkpoint (default: the bundled one)")
    args = parser.parse_args(argv)

    result: dict[str, Any] = {"protocol": {
        "threads": args.threads, "iters": args.iters, "warmup": args.warmup, "batch": 1,
        "note": "per-image milliseconds; the two items alternate in one loop on the same inputs; other "
                "processes share this machine, so the ratios are the robust figures"}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result["demo"] = demo_section(args, work)
        result["r50_busy_synthetic"] = r50_busy_section(args)
        if not args.skip_r50_model:
            result["r50_random_weights"] = r50_random_section(args, work)
    result["versions"] = {**package_versions(), "platform": platform.platform(),
                          "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "load_average_1m": os.getloadavg()[0]}
    print(json.dumps({k: v for k, v in result.items() if k != "versions"}, indent=1, default=str)[:6000])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float) + "\n")
    ok = [result["r50_busy_synthetic"]["same_detections"]]
    if "postprocess_timing" in result["demo"]:
        ok.append(result["demo"]["equivalence"]["passed"])
    if "r50_random_weights" in result:
        ok.append(result["r50_random_weights"]["same_detections"])
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
