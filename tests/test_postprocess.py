"""Post-process against a plain reference written here: per-level sigmoid over the (H*W*A, K)
matrix, threshold, top-k, decode, per-class greedy NMS one box at a time (facts §1f, 2e, 3e, 4e, 5e)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retinanet_trt.runtime import nms
from retinanet_trt.runtime.anchors import grid_anchors
from retinanet_trt.runtime.box_coder import decode
from retinanet_trt.runtime.nms import batched_nms
from retinanet_trt.runtime.postprocess import postprocess
from retinanet_trt.runtime.types import Detections, ImageMeta
from retinanet_trt.spec import AnchorSpec, BoxCoderSpec, FPNSpec, HeadSpec, ModelSpec, PostprocessSpec

INPUT_HW = (64, 96)
# Three images padded to one input size, each resized from a different original size.
METAS = [
    ImageMeta(original_hw=(128, 180), resized_hw=(64, 90), input_hw=INPUT_HW),
    ImageMeta(original_hw=(75, 144), resized_hw=(50, 96), input_hw=INPUT_HW),
    ImageMeta(original_hw=(33, 47), resized_hw=(60, 80), input_hw=INPUT_HW),
]


def _spec(generator: str = "detectron2", order: str = "size_major", ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
          coder: BoxCoderSpec | None = None, **post: object) -> ModelSpec:
    """Three levels, three anchors (one size x three ratios) and three classes: small but complete."""
    spec = ModelSpec(
        fpn=FPNSpec(levels=[3, 4, 5]),
        head=HeadSpec(num_classes=3, num_anchors=3),
        anchors=AnchorSpec(sizes=[[24.0], [48.0], [96.0]], aspect_ratios=list(ratios), strides=[8, 16, 32],
                           order=order, generator=generator),
        box_coder=coder or BoxCoderSpec(),
        postprocess=PostprocessSpec(score_thresh=[0.05] * 3, label_map=[1, 5, 9], class_names=["a", "b", "c"]),
    )
    for key, value in post.items():
        setattr(spec.postprocess, key, value)
    spec.validate()
    return spec


LEGACY = BoxCoderSpec([10.0, 10.0, 5.0, 5.0], math.log(1000 / 16), True)
CONVENTIONS = {
    "detectron2": _spec(),
    "torchvision": _spec("torchvision", "ratio_major", clip="resized", drop_empty=False, topk_per_level=12,
                         max_detections=30),
    "maskrcnn_benchmark": _spec("legacy", "ratio_major", coder=LEGACY, nms_iou=0.4, nms_rule="ge", nms_plus_one=True,
                                clip="resized_minus1", drop_empty=False),
    "detectron": _spec("legacy", "size_major", (1.0, 2.0, 0.5), BoxCoderSpec(plus_one=True), nms_rule="ge",
                       nms_plus_one=True, clip="original_minus1", drop_empty=False, score_thresh=[0.05, 0.3, 0.0],
                       max_detections=7),
    "yhenon": _spec("yhenon", "ratio_major", coder=BoxCoderSpec([10.0, 10.0, 5.0, 5.0], None, False),
                    clip="padded_lower", drop_empty=False, topk_per_level=None, max_detections=None),
    "no_clip_tiny_topk": _spec(clip="none", topk_per_level=1, nms_iou=0.3, score_thresh=[0.2, 0.5, 0.01]),
}


def _outputs(spec: ModelSpec, n: int, seed: int, ties: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, k = spec.head.num_anchors, spec.head.num_classes
    out = {}
    for lv in spec.levels:
        h, w = INPUT_HW[0] // 2**lv, INPUT_HW[1] // 2**lv
        logits = rng.normal(-1.5, 1.5, size=(n, a * k, h, w))
        if ties:  # coarse logits make equal scores common, so tie-breaking is exercised
            logits = np.round(logits * 2) / 2
        out[f"cls_p{lv}"] = logits.astype(np.float32)
        out[f"box_p{lv}"] = rng.normal(0, 0.6 if not ties else 0.0, size=(n, a * 4, h, w)).astype(np.float32)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def _greedy(boxes: np.ndarray, threshold: float, rule: str, plus_one: bool) -> list[int]:
    """Greedy NMS over boxes (n, 4) float32 in priority order: take the best box left, drop what it
    suppresses (float32 IoU, compared in float64 like the C++ kernels), repeat."""
    one = np.float32(1.0 if plus_one else 0.0)
    x1, y1, x2, y2 = (boxes[:, c] for c in range(4))
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    alive = np.ones(len(boxes), dtype=bool)
    kept = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        kept.append(i)
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2) - np.maximum(x1[i], x1) + one)
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2) - np.maximum(y1[i], y1) + one)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = (inter / (areas[i] + areas - inter)).astype(np.float64)
        hit = iou > threshold if rule == "gt" else iou >= threshold
        alive[i + 1 :] &= ~hit[i + 1 :]
    return kept


def _scale(boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    rh = np.float32(meta.original_hw[0]) / np.float32(meta.resized_hw[0])
    rw = np.float32(meta.original_hw[1]) / np.float32(meta.resized_hw[1])
    return boxes * np.array([rw, rh, rw, rh], dtype=np.float32)


def reference(outputs: dict[str, np.ndarray], spec: ModelSpec, metas: list[ImageMeta]) -> list[Detections]:
    post, a, k = spec.postprocess, spec.head.num_anchors, spec.head.num_classes
    results = []
    for n, meta in enumerate(metas):
        hws = [outputs[f"cls_p{lv}"].shape[2:] for lv in spec.levels]
        anchors = grid_anchors(spec, meta.input_hw, hws)
        boxes, scores, classes = [], [], []
        for i, lv in enumerate(spec.levels):
            h, w = hws[i]
            s = _sigmoid(outputs[f"cls_p{lv}"][n].reshape(a, k, h, w).transpose(2, 3, 0, 1).reshape(-1))
            d = outputs[f"box_p{lv}"][n].reshape(a, 4, h, w).transpose(2, 3, 0, 1).reshape(-1, 4)
            idx = [j for j in range(s.size) if s[j] > np.float32(post.score_thresh[i])]
            idx = sorted(idx, key=lambda j: (-s[j], j))[: post.topk_per_level]
            rows = np.array(idx, dtype=np.int64) // k
            boxes.append(decode(d[rows], anchors[i][rows], spec.box_coder))
            scores.append(s[idx])
            classes.append(np.array(idx, dtype=np.int64) % k)
        b, s, c = np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)
        (rh, rw), (ih, iw), (oh, ow) = meta.resized_hw, meta.input_hw, meta.original_hw
        if post.clip == "resized":
            b = np.stack([b[:, 0].clip(0, rw), b[:, 1].clip(0, rh), b[:, 2].clip(0, rw), b[:, 3].clip(0, rh)], 1)
        elif post.clip == "resized_minus1":
            b = np.stack([b[:, 0].clip(0, rw - 1), b[:, 1].clip(0, rh - 1), b[:, 2].clip(0, rw - 1),
                          b[:, 3].clip(0, rh - 1)], 1)
        elif post.clip == "padded_lower":
            b = np.stack([np.maximum(b[:, 0], 0), np.maximum(b[:, 1], 0), np.minimum(b[:, 2], iw),
                          np.minimum(b[:, 3], ih)], 1)
        elif post.clip == "original_minus1":
            b = _scale(b, meta)
            b = np.stack([b[:, 0].clip(0, ow - 1), b[:, 1].clip(0, oh - 1), b[:, 2].clip(0, ow - 1),
                          b[:, 3].clip(0, oh - 1)], 1)
        b = b.astype(np.float32)
        order = sorted(range(len(s)), key=lambda j: (-s[j], j))
        kept = []
        for cls in range(k):
            members = [j for j in order if c[j] == cls]
            kept += [members[q] for q in _greedy(b[members], post.nms_iou, post.nms_rule, post.nms_plus_one)]
        kept = sorted(kept, key=lambda j: (-s[j], j))[: post.max_detections]
        b, s, c = b[kept].reshape(-1, 4), s[kept], c[kept]
        if post.clip != "original_minus1":
            b = _scale(b, meta)
        if post.clip == "original":
            b = np.stack([b[:, 0].clip(0, ow), b[:, 1].clip(0, oh), b[:, 2].clip(0, ow), b[:, 3].clip(0, oh)], 1)
        if post.drop_empty:
            ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            b, s, c = b[ok], s[ok], c[ok]
        labels = np.array(spec.label_ids(), dtype=np.int64)[c]
        results.append(Detections(b.astype(np.float32), s, labels, [spec.class_names()[j] for j in c]))
    return results


def _assert_same(got: list[Detections], want: list[Detections]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.boxes, w.boxes)
        np.testing.assert_array_equal(g.scores, w.scores)
        np.testing.assert_array_equal(g.labels, w.labels)
        assert g.names == w.names
        assert g.boxes.dtype == np.float32 and g.scores.dtype == np.float32 and g.labels.dtype == np.int64


@pytest.mark.parametrize("convention", list(CONVENTIONS))
@pytest.mark.parametrize("seed", range(4))
def test_matches_plain_reference(convention: str, seed: int) -> None:
    spec = CONVENTIONS[convention]
    outputs = _outputs(spec, len(METAS), seed, ties=seed % 2 == 1)
    got = postprocess(outputs, spec, METAS)
    _assert_same(got, reference(outputs, spec, METAS))
    assert sum(len(d) for d in got) > 0
    for d in got:
        assert np.all(np.diff(d.scores) <= 0)


def test_max_detections_and_topk_bite() -> None:
    spec = CONVENTIONS["detectron"]
    outputs = _outputs(spec, len(METAS), 7, ties=False)
    assert all(len(d) == spec.postprocess.max_detections for d in postprocess(outputs, spec, METAS))
    spec = CONVENTIONS["no_clip_tiny_topk"]
    # top-1 per level and three levels: at most three candidates reach NMS.
    assert all(len(d) <= 3 for d in postprocess(outputs, spec, METAS))


def test_threshold_on_logits_equals_sigmoid_threshold_at_the_boundary() -> None:
    spec = _spec(nms_iou=1.0, max_detections=None, clip="none", drop_empty=False, score_thresh=[0.05, 0.3, 0.0],
                 topk_per_level=None)
    outputs = _outputs(spec, 1, 0, ties=False)
    # Logits a few float32 steps either side of logit(thresh), where a loose logit compare would err.
    for i, lv in enumerate(spec.levels):
        t = spec.postprocess.score_thresh[i]
        # For t = 0 the edge is where sigmoid rounds to 0 in float32: exp(x) = 2^-150.
        centre = np.float32(math.log(t / (1 - t)) if t > 0 else -150 * math.log(2))
        values = (centre + np.arange(-20, 21) * np.spacing(np.abs(centre))).astype(np.float32)
        flat = outputs[f"cls_p{lv}"].reshape(-1)
        flat[: values.size] = values
    expected = sum(int((_sigmoid(outputs[f"cls_p{lv}"]) > np.float32(t)).sum())
                   for lv, t in zip(spec.levels, spec.postprocess.score_thresh, strict=True))
    assert len(postprocess(outputs, spec, METAS[:1])[0]) == expected


def test_batch_sizes_and_level_times() -> None:
    spec = CONVENTIONS["detectron2"]
    outputs = _outputs(spec, 3, 3, ties=False)
    full = postprocess(outputs, spec, METAS)
    singles = [postprocess({k: v[n : n + 1] for k, v in outputs.items()}, spec, [METAS[n]])[0] for n in range(3)]
    _assert_same(full, singles)
    times: dict[str, float] = {}
    postprocess(outputs, spec, METAS, times)
    postprocess(outputs, spec, METAS, times)
    assert set(times) == {"p3", "p4", "p5", "nms"} and all(v > 0 for v in times.values())
    empty = {k: v[:0] for k, v in outputs.items()}
    assert postprocess(empty, spec, []) == []
    with pytest.raises(ValueError, match="ImageMeta"):
        postprocess(outputs, spec, METAS[:2])


def _random_boxes(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    xy = rng.uniform(0, spread, size=(n, 2))
    wh = rng.uniform(0, 30, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    boxes[rng.random(n) < 0.05] = boxes[0]  # exact duplicates: IoU 1 with ties in position
    return np.round(boxes).astype(np.float32)  # integer corners make IoU == threshold happen


@pytest.mark.parametrize("rule", ["gt", "ge"])
@pytest.mark.parametrize("plus_one", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.5, 0.7])
def test_batched_nms_matches_greedy_per_class(rule: str, plus_one: bool, threshold: float) -> None:
    rng = np.random.default_rng(int(threshold * 100) + plus_one)
    for spread, n_classes in [(60, 1), (150, 4), (40, 2)]:
        boxes = _random_boxes(rng, 150, spread)
        scores = np.round(rng.random(150), 1).astype(np.float32)  # many ties
        classes = rng.integers(0, n_classes, 150)
        order = sorted(range(150), key=lambda j: (-scores[j], j))
        want = []
        for c in range(n_classes):
            members = [j for j in order if classes[j] == c]
            want += [members[q] for q in _greedy(boxes[members], threshold, rule, plus_one)]
        want = sorted(want, key=lambda j: (-scores[j], j))
        np.testing.assert_array_equal(batched_nms(boxes, scores, classes, threshold, rule, plus_one), want)
        for cap in (0, 1, 5, 40):  # the prefix search must give the head of the full answer
            np.testing.assert_array_equal(batched_nms(boxes, scores, classes, threshold, rule, plus_one, cap),
                                          want[:cap])


def test_dense_class_uses_greedy_loop_with_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 200, 50)
    scores = rng.random(200).astype(np.float32)
    classes = rng.integers(0, 3, 200)
    vectorised = batched_nms(boxes, scores, classes, 0.5)
    monkeypatch.setattr(nms, "_MAX_PAIRS_PER_CLASS", 50)
    np.testing.assert_array_equal(batched_nms(boxes, scores, classes, 0.5), vectorised)
    assert batched_nms(boxes[:0], scores[:0], classes[:0], 0.5).shape == (0,)
