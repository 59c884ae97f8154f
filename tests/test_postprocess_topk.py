"""The sampled top-k bound of the post-process selects exactly what thresholding the whole map does.

A map where most (anchor, class) pairs pass the score threshold (an untrained head) takes the
bound path; ties at the k-th score, scores saturated at 1.0 and maps the strided sample misjudges
must give the same candidates as the plain path, which the other post-process tests pin to the
frameworks' own outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from retinanet_trt.runtime import postprocess as pp
from retinanet_trt.runtime.anchors import grid_anchors
from retinanet_trt.spec.presets import get_preset

H, W = 40, 48  # P3 of a 320x384 input: 720 x 1920 = 1.4M pairs, large enough to be sampled


def _spec():
    return get_preset("retinanet_r50_fpn")


def _both(logits: np.ndarray, monkeypatch: pytest.MonkeyPatch, topk: int = 1000, thresh: float = 0.05):
    """(_level_candidates with the bound, without it, whether the bound path was kept)."""
    spec = _spec()
    rng = np.random.default_rng(1)
    deltas = rng.normal(0, 0.3, size=(36, H, W)).astype(np.float32)
    anchors = grid_anchors(spec, (H * 8, W * 8), [(H, W), (H // 2, W // 2), (H // 4, W // 4), (5, 6), (3, 3)])[0]
    calls: list[np.float32] = []
    real = pp._candidates_above

    def spy(flat, bound, t):
        calls.append(bound)
        return real(flat, bound, t)

    monkeypatch.setattr(pp, "_candidates_above", spy)
    fast = pp._level_candidates(logits, deltas, anchors, spec, thresh, topk)
    kept_bound = len(calls) == 1 and calls[0] > pp.score_prefilter(thresh)
    monkeypatch.setattr(pp, "_topk_bound", lambda *a: None)
    plain = pp._level_candidates(logits, deltas, anchors, spec, thresh, topk)
    return fast, plain, kept_bound


def _assert_same(fast, plain) -> None:
    for a, b in zip(fast, plain, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_untrained_head_takes_the_bound_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Like R50 with random weights on a photo: about 14 % of the pairs pass 0.05.
    logits = np.random.default_rng(0).normal(-4.55, 1.57, size=(720, H, W)).astype(np.float32)
    fast, plain, kept_bound = _both(logits, monkeypatch)
    assert kept_bound
    assert fast[1].size == 1000
    _assert_same(fast, plain)


@pytest.mark.parametrize("grid", [0.25, 1.0])
def test_ties_at_the_kth_score(monkeypatch: pytest.MonkeyPatch, grid: float) -> None:
    """Logits on a coarse grid: hundreds of pairs share the k-th score; the lowest flat order wins."""
    raw = np.random.default_rng(2).normal(-2.0, 2.0, size=(720, H, W))
    logits = (np.round(raw / grid) * grid).astype(np.float32)
    fast, plain, _ = _both(logits, monkeypatch)
    _assert_same(fast, plain)


def test_scores_saturated_at_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of logits > 17 all score 1.0 in float32: the k-th score is 1.0 itself, and
    logits below the sampled bound tie with it, so the bound cannot be used."""
    logits = np.random.default_rng(3).normal(-6.0, 1.0, size=(720, H, W)).astype(np.float32)
    hot = np.random.default_rng(4).choice(logits.size, 5000, replace=False)
    logits.reshape(-1)[hot] = np.random.default_rng(5).uniform(17.0, 30.0, size=hot.size).astype(np.float32)
    fast, plain, kept_bound = _both(logits, monkeypatch)
    assert not kept_bound
    assert np.all(fast[1] == np.float32(1.0))
    _assert_same(fast, plain)


def test_sample_that_sees_only_the_peaks_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """High logits exactly at the sampled positions and nowhere else: fewer than k lie above the
    bound, so the plain path runs, with the same result."""
    logits = np.full((720, H, W), -1.0, dtype=np.float32)
    flat = logits.reshape(-1)
    step = flat.size // pp._SAMPLE_SIZE
    flat[::step] = 5.0
    fast, plain, kept_bound = _both(logits, monkeypatch)
    assert not kept_bound
    _assert_same(fast, plain)


def test_sample_that_misses_the_peaks(monkeypatch: pytest.MonkeyPatch) -> None:
    """High logits only between the sampled positions: the sample's bound is below the score floor."""
    logits = np.full((720, H, W), -8.0, dtype=np.float32)
    flat = logits.reshape(-1)
    step = flat.size // pp._SAMPLE_SIZE
    flat[1::step] = np.random.default_rng(6).uniform(0.0, 4.0, size=flat[1::step].size).astype(np.float32)
    fast, plain, kept_bound = _both(logits, monkeypatch)
    assert not kept_bound
    _assert_same(fast, plain)


def test_no_topk_keeps_every_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    """yhenon has no top-k: the bound never applies."""
    logits = np.random.default_rng(7).normal(-4.0, 1.0, size=(720, H, W)).astype(np.float32)
    fast, plain, kept_bound = _both(logits, monkeypatch, topk=None)  # type: ignore[arg-type]
    assert not kept_bound
    _assert_same(fast, plain)
