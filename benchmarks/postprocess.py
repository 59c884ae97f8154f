"""Vectorised post-process vs a plain per-class loop, same synthetic outputs, same run.

    python benchmarks/postprocess.py --json benchmarks/results/postprocess.json

The outputs imitate a detector on a busy image: background logits around -7 (about 0.04 % of
(anchor, class) pairs pass 0.05 by chance) plus objects whose nearby anchors score high for
their class, so NMS has real clusters to resolve. The baseline is the common plain structure:
per level, transpose to (H*W*A, K), sigmoid everything, threshold, top-k, decode; then for each
class a greedy NMS loop. Both must give identical detections.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from retinanet_trt.bench import summarize
from retinanet_trt.runtime.anchors import grid_anchors
from retinanet_trt.runtime.box_coder import decode
from retinanet_trt.runtime.postprocess import postprocess, sigmoid
from retinanet_trt.runtime.types import Detections, ImageMeta
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.presets import get_preset


def synthetic_outputs(
    spec: ModelSpec, n_images: int, input_hw: tuple[int, int], n_objects: int, seed: int
) -> dict[str, np.ndarray]:
    """cls_p{l} (N, A*K, H/2^l, W/2^l) and box_p{l} (N, A*4, ...) float32 with object clusters."""
    rng = np.random.default_rng(seed)
    a, k = spec.head.num_anchors, spec.head.num_classes
    out: dict[str, np.ndarray] = {}
    for lv in spec.levels:
        h, w = -(-input_hw[0] // 2**lv), -(-input_hw[1] // 2**lv)
        cls = rng.normal(-7.0, 1.2, size=(n_images, a, k, h, w)).astype(np.float32)
        for n in range(n_images):
            for _ in range(n_objects):
                # An object lights up a few neighbouring cells and anchors on its level and class.
                c, y, x = rng.integers(k), rng.integers(h), rng.integers(w)
                ys, xs = slice(max(0, y - 1), y + 2), slice(max(0, x - 1), x + 2)
                boost = rng.uniform(2.0, 8.0, size=(a,) + cls[n, :, c, ys, xs].shape[1:])
                cls[n, :, c, ys, xs] += boost.astype(np.float32)
        out[f"cls_p{lv}"] = cls.reshape(n_images, a * k, h, w)
        out[f"box_p{lv}"] = rng.normal(0.0, 0.5, size=(n_images, a * 4, h, w)).astype(np.float32)
    return out


def _greedy_nms(boxes: np.ndarray, threshold: float, rule: str, plus_one: bool) -> list[int]:
    """Textbook greedy NMS over boxes (n, 4) already sorted by priority -> kept positions."""
    one = np.float32(1.0 if plus_one else 0.0)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.arange(boxes.shape[0])
    kept = []
    while order.size:
        i, rest = order[0], order[1:]
        kept.append(int(i))
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = (inter / (areas[i] + areas[rest] - inter)).astype(np.float64)
        order = rest[~(iou > threshold if rule == "gt" else iou >= threshold)]
    return kept


def per_class_loop(outputs: dict[str, np.ndarray], spec: ModelSpec, metas: list[ImageMeta]) -> list[Detections]:
    """The baseline: a plain implementation with a Python loop over classes for NMS."""
    post, a, k = spec.postprocess, spec.head.num_anchors, spec.head.num_classes
    results = []
    for n, meta in enumerate(metas):
        feature_hws = [outputs[f"cls_p{lv}"].shape[2:] for lv in spec.levels]
        anchors = grid_anchors(spec, meta.input_hw, feature_hws)
        all_boxes, all_scores, all_cls = [], [], []
        for i, lv in enumerate(spec.levels):
            _, h, w = outputs[f"cls_p{lv}"][n].shape
            scores = sigmoid(outputs[f"cls_p{lv}"][n].reshape(a, k, h, w).transpose(2, 3, 0, 1).reshape(-1))
            deltas = outputs[f"box_p{lv}"][n].reshape(a, 4, h, w).transpose(2, 3, 0, 1).reshape(-1, 4)
            idx = np.flatnonzero(scores > np.float32(post.score_thresh[i]))
            idx = idx[np.argsort(-scores[idx], kind="stable")][: post.topk_per_level]
            all_boxes.append(decode(deltas[idx // k], anchors[i][idx // k], spec.box_coder))
            all_scores.append(scores[idx])
            all_cls.append(idx % k)
        boxes, scores, classes = np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_cls)
        assert post.clip == "original", "the baseline implements detectron2's clipping only"
        kept = []
        for c in range(k):
            members = np.flatnonzero(classes == c)
            members = members[np.argsort(-scores[members], kind="stable")]
            kept += [members[j] for j in _greedy_nms(boxes[members], post.nms_iou, post.nms_rule, post.nms_plus_one)]
        kept_arr = np.array(sorted(kept, key=lambda j: (-scores[j], j)), dtype=np.int64)[: post.max_detections]
        rh, rw = (np.float32(o) / np.float32(r) for o, r in zip(meta.original_hw, meta.resized_hw, strict=True))
        out = boxes[kept_arr] * np.array([rw, rh, rw, rh], dtype=np.float32)
        out[:, 0::2] = np.clip(out[:, 0::2], 0, np.float32(meta.original_hw[1]))
        out[:, 1::2] = np.clip(out[:, 1::2], 0, np.float32(meta.original_hw[0]))
        nonempty = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
        labels = np.asarray(spec.label_ids())[classes[kept_arr][nonempty]]
        results.append(Detections(out[nonempty], scores[kept_arr][nonempty], labels))
    return results


def identical(a: list[Detections], b: list[Detections]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.boxes, y.boxes) and np.array_equal(x.scores, y.scores) and np.array_equal(x.labels, y.labels)
        for x, y in zip(a, b, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--preset", default="retinanet_r50_fpn", choices=["retinanet_r50_fpn", "tiny"],
                        help="a preset with detectron2 clipping, the one the baseline implements")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--objects", type=int, default=12, help="objects per level and image")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    spec = get_preset(args.preset)
    hw = (args.height, args.width)
    outputs = synthetic_outputs(spec, 1, hw, args.objects, args.seed)
    metas = [ImageMeta(original_hw=(hw[0] * 3 // 2, hw[1] * 3 // 2), resized_hw=hw, input_hw=hw)]

    vec = postprocess(outputs, spec, metas)
    ref = per_class_loop(outputs, spec, metas)
    same = identical(vec, ref)
    candidates = sum(
        int((outputs[f"cls_p{lv}"] > np.float32(np.log(t / (1 - t)))).sum())
        for lv, t in zip(spec.levels, spec.postprocess.score_thresh, strict=True)
    )
    for _ in range(args.warmup):
        postprocess(outputs, spec, metas)
        per_class_loop(outputs, spec, metas)
    # Alternate the two, so drifts in machine load hit both alike.
    # CPU time is recorded too: on a shared machine, time spent descheduled inflates wall time only.
    vec_times, loop_times, vec_cpu, loop_cpu = [], [], [], []
    level_ms: dict[str, float] = {}
    for _ in range(args.iters):
        t0, c0 = time.perf_counter(), time.thread_time()
        postprocess(outputs, spec, metas, level_ms)
        t1, c1 = time.perf_counter(), time.thread_time()
        per_class_loop(outputs, spec, metas)
        t2, c2 = time.perf_counter(), time.thread_time()
        vec_times.append((t1 - t0) * 1e3)
        loop_times.append((t2 - t1) * 1e3)
        vec_cpu.append((c1 - c0) * 1e3)
        loop_cpu.append((c2 - c1) * 1e3)
    v, lp = summarize(vec_times), summarize(loop_times)
    result = {
        "preset": args.preset, "input_hw": list(hw), "images": 1, "iterations": args.iters,
        "candidates_above_threshold": candidates, "detections": len(vec[0]),
        "vectorized_ms": v["median"], "vectorized_p90_ms": v["p90"], "vectorized_min_ms": v["min"],
        "loop_ms": lp["median"], "loop_p90_ms": lp["p90"], "loop_min_ms": lp["min"],
        "ratio": lp["median"] / v["median"], "identical": same,
        "vectorized_cpu_ms": statistics.median(vec_cpu), "loop_cpu_ms": statistics.median(loop_cpu),
        "vectorized_level_ms_mean": {name: ms / args.iters for name, ms in level_ms.items()},
        # Other processes share this machine: the ratio is the robust figure, absolute times move with load.
        "load_average_1m": os.getloadavg()[0], "cpu_count": os.cpu_count(),
        "versions": {"numpy": np.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
                     "processor": platform.processor() or platform.machine()},
    }
    print(f"{args.preset} {hw[0]}x{hw[1]}, {candidates} candidates > threshold, {len(vec[0])} detections, "
          f"identical={same}")
    print(f"{'':12} {'median ms':>10} {'p90 ms':>10}")
    print(f"{'vectorized':12} {v['median']:10.2f} {v['p90']:10.2f}")
    print(f"{'class loop':12} {lp['median']:10.2f} {lp['p90']:10.2f}")
    print(f"ratio (loop / vectorized, median): {result['ratio']:.1f}x; CPU-time medians "
          f"{result['vectorized_cpu_ms']:.2f} / {result['loop_cpu_ms']:.2f} ms; load average {result['load_average_1m']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
