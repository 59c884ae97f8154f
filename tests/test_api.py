"""The Python API: top-level import, single image vs list, thresholds, context manager, warmup,
and the README's example, run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.types import Detections

README = Path(__file__).resolve().parents[1] / "README.md"


def test_detector_is_importable_from_the_package() -> None:
    import retinanet_trt
    from retinanet_trt.runtime.detector import Detector

    assert retinanet_trt.Detector is Detector
    with pytest.raises(AttributeError):
        retinanet_trt.NoSuchThing  # noqa: B018


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled (trained) demo model, so thresholds have detections to cut."""
    from retinanet_trt.demo import load_demo
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx

    spec, model = load_demo()
    path = tmp_path_factory.mktemp("demo") / "demo.onnx"
    export_onnx(model, spec, path, ExportOptions(input_hw=(256, 320), dynamic=True))
    return path


@pytest.fixture(scope="module")
def detector(demo_onnx: Path):  # type: ignore[no-untyped-def]
    from retinanet_trt import Detector

    return Detector.load(demo_onnx, backend="ort-cpu")


def _photo(seed: int, hw: tuple[int, int] | None = None) -> np.ndarray:
    """A synthetic-shapes image of the demo's kind (optionally resized to hw)."""
    from retinanet_trt.demo.synthetic import iter_samples

    image = next(iter_samples(1, seed, split="val")).image
    return image if hw is None else np.asarray(Image.fromarray(image).resize((hw[1], hw[0])))


def test_one_image_gives_one_detections_and_a_list_gives_a_list(detector, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = _photo(0), _photo(1, (150, 260))
    path = tmp_path / "b.png"
    Image.fromarray(b).save(path)
    single = detector(a)
    assert isinstance(single, Detections)
    for one_of_them in (path, str(path), Image.fromarray(b)):
        d = detector(one_of_them)
        assert isinstance(d, Detections)
        np.testing.assert_array_equal(d.boxes, detector(b).boxes)
    both = detector([a, path])
    assert isinstance(both, list) and len(both) == 2
    np.testing.assert_array_equal(detector([a])[0].boxes, single.boxes)  # [image] is the same image
    stacked = detector(np.stack([a, a]))  # (N, H, W, C) is a batch, not N images of rows
    assert isinstance(stacked, list) and len(stacked) == 2


def test_score_threshold_at_load_and_per_call(detector, demo_onnx) -> None:  # type: ignore[no-untyped-def]
    from retinanet_trt import Detector

    image = _photo(2)
    everything = detector(image)
    assert len(everything) >= 4, len(everything)
    cut = float(np.median(everything.scores))
    per_call = detector(image, score_threshold=cut)
    expected = everything.scores > cut
    np.testing.assert_array_equal(per_call.scores, everything.scores[expected])
    np.testing.assert_array_equal(per_call.boxes, everything.boxes[expected])
    assert per_call.names == [n for n, k in zip(everything.names, expected) if k]
    with Detector.load(demo_onnx, score_threshold=cut) as at_load:
        np.testing.assert_array_equal(at_load(image).scores, per_call.scores)
        assert len(at_load(image, score_threshold=0.0)) == len(everything)  # a call overrides the load
    for bad in (-0.1, 1.5):
        with pytest.raises(UsageError, match="between 0 and 1"):
            detector(image, score_threshold=bad)


def test_context_manager_closes_the_backend_and_warmup_runs(demo_onnx: Path) -> None:
    from retinanet_trt import Detector

    closed = []
    with Detector.load(demo_onnx) as det:
        det.backend.close = lambda: closed.append(True)  # type: ignore[method-assign]
        det.warmup(iterations=1)
        assert "compute" in det.last_times_ms
    assert closed == [True]


def test_the_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no ```python example"
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "trt-export"), "--demo", "-o", str(tmp_path / "demo.onnx"), "--quiet"], check=True,
                   capture_output=True)
    done = subprocess.run([sys.executable, "-c", block.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"\[\d+, \d+\]", lines[-1]), lines
    assert len(lines) >= 2, "the demo model found nothing on the astronaut photo"
