"""The overlapped host pipeline (runtime/pipeline.py): same detections as overlap off, in input
order, per-image errors, bounded memory, early stop, trt-infer and trt-eval on top of it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet_trt.cli import eval as eval_cli
from retinanet_trt.cli import infer as infer_cli
from retinanet_trt.errors import UsageError
from retinanet_trt.runtime import pipeline
from retinanet_trt.runtime.backends.base import StageTimes
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.runtime.images import ImageLoadError


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled (trained) demo model, so there are detections to compare."""
    from retinanet_trt.demo import load_demo
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx

    spec, model = load_demo()
    path = tmp_path_factory.mktemp("demo") / "demo.onnx"
    export_onnx(model, spec, path, ExportOptions(input_hw=(256, 320), dynamic=True))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 synthetic-shape PNGs (small, different sizes) with an unreadable file in the middle."""
    from retinanet_trt.demo.synthetic import iter_samples

    out = tmp_path_factory.mktemp("images")
    for s in iter_samples(200, 7, split="val"):
        h, w = s.image.shape[:2]
        small = Image.fromarray(s.image).resize((w * 2 // 3, h * 2 // 3))
        small.save(out / f"{s.index:03d}.png")
    (out / "100_bad.png").write_bytes(b"not a png at all")  # sorts between 100.png and 101.png
    return out


def _dets(results: list) -> list:  # type: ignore[type-arg]
    return [(r.index, r.source, None if r.error is None else str(r.error),
             None if r.detections is None else (r.detections.boxes.tobytes(), r.detections.scores.tobytes(),
                                                 r.detections.labels.tobytes()))
            for r in results]


def test_overlap_gives_the_detections_of_overlap_off_in_order_with_the_bad_image_reported(demo_onnx, folder) -> None:  # type: ignore[no-untyped-def]
    paths = sorted(folder.iterdir())
    assert len(paths) == 201 and paths[101].name == "100_bad.png"
    det = Detector.load(demo_onnx, "ort-cpu")
    off = list(det.stream(paths, workers=0))
    on = list(det.stream(paths, workers=2))
    assert [r.index for r in on] == list(range(201))
    assert _dets(on) == _dets(off)  # bit-identical boxes, scores, labels, same order
    bad = on[101]
    assert bad.error is not None and isinstance(bad.error, ImageLoadError) and "100_bad.png" in str(bad.error)
    assert sum(r.ok for r in on) == 200 and sum(len(r.detections) for r in on if r.ok) > 200
    assert all(r.meta is not None and r.meta.source == str(paths[r.index]) for r in on if r.ok)
    # a list call in batches through the pipeline: per-image metas, first error raised
    with pytest.raises(ImageLoadError, match="100_bad.png"):
        det(paths[95:105], batch_size=3)
    got = det(paths[:6], batch_size=4, workers=2)  # a dynamic input pads a batch to its largest image
    assert [d.scores.tobytes() for d in got] == [d.scores.tobytes() for d in det(paths[:6], batch_size=4, workers=0)]
    assert [m.source for m in det.last_metas] == [str(p) for p in paths[:6]]


def test_trt_infer_and_trt_eval_with_overlap_match_overlap_off(demo_onnx, folder, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    files = sorted(folder.iterdir())[90:110]
    sub = tmp_path / "in"
    sub.mkdir()
    for f in files:
        (sub / f.name).write_bytes(f.read_bytes())
    outs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"out{workers}"
        assert infer_cli.main([str(demo_onnx), str(sub), "-o", str(out), "--workers", workers, "--batch", "2"]) == 0
        outs[workers] = json.loads((out / "detections.json").read_text())
        assert len(list(out.rglob("*.det.png"))) == 19
    assert outs["0"] == outs["2"] and outs["0"]
    assert "skipped" in capsys.readouterr().err
    stats = {}
    for workers in ("0", "2"):
        js = tmp_path / f"ap{workers}.json"
        assert eval_cli.main(["demo", "--demo", "--demo-images", "12", "--workers", workers, "--json", str(js),
                              "--no-progress"]) == 0
        stats[workers] = json.loads(js.read_text())
    for key in ("AP", "AP50", "per_category", "num_images"):
        assert stats["0"][key] == stats["2"][key]


class _SlowBackend:
    """Records how many batches were prepared but not yet consumed; sleeps like a device."""

    name = "slow"

    def __init__(self, real, ms: float) -> None:  # type: ignore[no-untyped-def]
        self.real, self.spec, self.ms = real, real.spec, ms
        self.last_times = StageTimes()
        self.fixed_input_hw = None
        self.threads: set[str] = set()

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        out = self.real.run(images)
        time.sleep(self.ms / 1e3)
        return out

    def close(self) -> None:
        pass


def test_in_flight_batches_stay_within_the_depth_and_an_early_stop_ends_the_threads(demo_onnx) -> None:  # type: ignore[no-untyped-def]
    from retinanet_trt.demo.synthetic import iter_samples

    real = Detector.load(demo_onnx, "ort-cpu")
    det = Detector(_SlowBackend(real.backend, 5.0))
    images = [s.image[:128, :160] for s in iter_samples(24, 3, split="val")]
    prepared, consumed, peak = [0], [0], [0]
    original = det.prepare

    def counting_prepare(batch):  # type: ignore[no-untyped-def]
        prepared[0] += 1
        peak[0] = max(peak[0], prepared[0] - consumed[0])
        return original(batch)

    det.prepare = counting_prepare  # type: ignore[method-assign]
    depth = pipeline.plan_depth(det, 2, 1, None)
    assert depth == 4
    for _ in det.stream(images, workers=2):
        time.sleep(0.01)  # a slow consumer: the producer must wait, not run ahead
        consumed[0] += 1
    assert peak[0] <= depth
    assert det.backend.threads == {"retinanet-device"}
    # a memory bound smaller than one batch: one batch at a time
    assert pipeline.plan_depth(det, 2, 1, 0.001) == 1
    before = threading.active_count()
    stream = det.stream(images, workers=2)
    first = [next(stream) for _ in range(3)]
    stream.close()  # the consumer stops early: the device thread and the workers end
    assert [r.index for r in first] == [0, 1, 2]
    assert threading.active_count() <= before


def test_backend_errors_are_the_batch_images_and_bad_arguments_one_line(demo_onnx) -> None:  # type: ignore[no-untyped-def]
    det = Detector.load(demo_onnx, "ort-cpu")

    class Refusing(_SlowBackend):
        def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
            if images.shape[3] > 300:
                raise UsageError("input too wide for this engine")
            return self.real.run(images)

    picky = Detector(Refusing(det.backend, 0))
    wide, narrow = np.full((200, 400, 3), 90, np.uint8), np.full((200, 200, 3), 90, np.uint8)
    res = list(picky.stream([narrow, wide, narrow], workers=2))
    assert [r.ok for r in res] == [True, False, True] and "too wide" in str(res[1].error)
    with pytest.raises(UsageError, match="--workers 99"):
        list(det.stream([narrow], workers=99))
    with pytest.raises(UsageError, match="--batch 0"):
        list(det.stream([narrow], batch_size=0))
    # a bug (not a per-image error) in a worker reaches the caller
    boom = list(det.stream([narrow, narrow], workers=2, on_result=lambda r, im: r.index))
    assert [r.extra for r in boom] == [0, 1]

    def broken(result, image):  # type: ignore[no-untyped-def]
        raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError, match="drawing failed"):
        list(det.stream([narrow, narrow], workers=2, on_result=broken))


def test_output_sets_are_reused_through_io_binding(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A static ONNX: ONNX Runtime writes into pooled arrays (IO binding), results unchanged."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    path = tmp_path / "static.onnx"
    export_onnx(build_model(spec, seed=0), spec, path, ExportOptions(input_hw=(128, 160)))
    det = Detector.load(path, "ort-cpu", score_threshold=0.0)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (100 + i, 150, 3), dtype=np.uint8) for i in range(8)]
    plain = [det([im]) for im in images]
    pooled = pipeline.OutputPool(det.backend)
    made = pooled.take((1, 3, 128, 160))
    assert made is not None and all(a.flags.writeable for a in made.values())
    res = list(det.stream(images, workers=2))
    assert [r.detections.scores.tobytes() for r in res] == [p[0].scores.tobytes() for p in plain]
