"""trt-export --input-format uint8: the graph normalises (N, H, W, 4) uint8 into exactly the host
pre-process's network input, the detections equal the float input's, and frameworks that
normalise before resizing are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet_trt.cli import export as export_cli
from retinanet_trt.cli import infer as infer_cli
from retinanet_trt.errors import UsageError
from retinanet_trt.export.uint8_input import check_photos, normalize_model, uint8_input_file
from retinanet_trt.runtime.backends.ort_backend import cpu_session
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.runtime.uint8_input import preprocess_uint8, uint8_refusal
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.presets import get_preset


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo model exported at a fixed 256x320 with the float input and with the uint8 input."""
    from retinanet_trt.demo import load_demo
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx

    spec, model = load_demo()
    out = tmp_path_factory.mktemp("u8")
    export_onnx(model, spec, out / "float.onnx", ExportOptions(input_hw=(256, 320)))
    report = uint8_input_file(out / "float.onnx", out / "uint8.onnx")
    assert report["passed"] and report["network_input_check"]["bit_exact"] and report["outputs_check"]["identical"]
    return out / "float.onnx", out / "uint8.onnx"


def _spec(name: str, **pre: object) -> ModelSpec:
    spec = get_preset(name)
    for k, v in pre.items():
        setattr(spec.preprocess, k, v)
    return spec


@pytest.mark.parametrize("spec", [
    _spec("tiny"),  # RGB, /255, ImageNet mean/std, Pillow
    _spec("retinanet_r50_fpn"),  # BGR, 0..255, Caffe means, Pillow
    _spec("tiny", resize_impl="cv2_uint8", channel_order="BGR", resize="fixed", fixed_size=[96, 128]),  # MindSpore-like
    _spec("r50_fpn1024_1class"),  # maskrcnn-benchmark rounding
], ids=["tiny", "r50", "cv2_uint8", "mrcnn"])
@pytest.mark.parametrize("input_hw", [None, (160, 224)], ids=["dynamic", "fixed"])
def test_the_graph_normalises_to_the_host_network_input_bit_for_bit(spec: ModelSpec, input_hw) -> None:  # type: ignore[no-untyped-def]
    prefix = cpu_session(normalize_model(spec))
    rng = np.random.default_rng(0)
    photos = [p[::3, ::3] for p in check_photos()[:3]] + [check_photos()[3], rng.integers(0, 256, (70, 90, 3), np.uint8)]
    for photo in photos:
        ref = preprocess([photo], spec, input_hw)
        u8 = preprocess_uint8([photo], spec, input_hw)
        assert u8.images.dtype == np.uint8 and u8.images.shape == (1, *ref.images.shape[2:], 4)
        assert u8.metas == ref.metas  # same sizes, same `shrunk`
        got = prefix.run(["normalized"], {"images": u8.images})[0]
        np.testing.assert_array_equal(got, ref.images)
    # a batch of different sizes pads each image the same way; a reused buffer is cleared
    batch = [photos[0], photos[4]]
    ref = preprocess(batch, spec, input_hw).images
    dirty = np.full(preprocess_uint8(batch, spec, input_hw).images.shape, 200, np.uint8)
    got = prefix.run(["normalized"], {"images": preprocess_uint8(batch, spec, input_hw, out=dirty).images})[0]
    np.testing.assert_array_equal(got, ref)


def test_uint8_model_gives_the_float_models_detections_and_takes_a_third_of_the_bytes(demo_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from retinanet_trt.demo.synthetic import iter_samples

    fl, u8 = (Detector.load(p, "ort-cpu") for p in demo_pair)
    assert (fl.input_format, u8.input_format) == ("float32_nchw", "uint8_nhwc")
    assert u8.fixed_input_hw == fl.fixed_input_hw == (256, 320)
    images = [s.image for s in iter_samples(6, 4, split="val")] + [np.asarray(Image.fromarray(
        next(iter_samples(1, 9, split="val")).image).resize((300, 500)))]  # portrait: shrunk to fit
    a, b = fl(images), u8(images)
    assert sum(len(d) for d in a) > 6
    for x, y in zip(a, b, strict=True):
        assert x.boxes.tobytes() == y.boxes.tobytes() and x.scores.tobytes() == y.scores.tobytes()
        assert x.labels.tolist() == y.labels.tolist()
    assert u8.last_metas[-1].shrunk
    assert fl.prepare(images[:1]).images.nbytes == 3 * u8.prepare(images[:1]).images.nbytes
    # trt-infer on both, through the overlapped pipeline: the same detections.json
    folder = tmp_path / "img"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i}.png")
    got = []
    for model in demo_pair:
        out = tmp_path / model.stem
        assert infer_cli.main([str(model), str(folder), "-o", str(out), "--no-draw", "--workers", "2"]) == 0
        got.append(json.loads((out / "detections.json").read_text()))
    assert got[0] == got[1] and got[0]


@pytest.mark.parametrize("impl", ["pillow_uint8", "cv2_uint8"])
def test_every_uint8_framework_gets_the_float_exports_outputs(impl: str, tmp_path: Path) -> None:
    """A whole model per uint8 resize (Pillow: detectron2 / maskrcnn-benchmark; cv2: MindSpore),
    fixed input: the export's own check finds identical outputs, and the detections agree."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model

    spec = _spec("tiny", resize_impl=impl, channel_order="BGR")
    spec.postprocess.score_thresh = [0.0] * 5  # random weights: keep detections to compare
    export_onnx(build_model(spec, seed=1), spec, tmp_path / "f.onnx", ExportOptions(input_hw=(192, 256)))
    report = uint8_input_file(tmp_path / "f.onnx", tmp_path / "u.onnx")
    assert report["network_input_check"]["bit_exact"] and report["outputs_check"]["identical"]
    photo = check_photos()[1]
    a, b = Detector.load(tmp_path / "f.onnx")(photo), Detector.load(tmp_path / "u.onnx")(photo)
    assert len(a) > 0 and a.boxes.tobytes() == b.boxes.tobytes() and a.scores.tobytes() == b.scores.tobytes()


def test_frameworks_that_normalise_before_resizing_are_refused_in_one_line(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    for impl in ("torch_bilinear_float", "skimage_float", "cv2_float"):
        reason = uint8_refusal(_spec("tiny", resize_impl=impl).preprocess)
        assert reason and impl in reason and "normalises before it resizes" in reason and "\n" not in reason
        with pytest.raises(UsageError, match="does not apply"):
            preprocess_uint8([np.zeros((40, 40, 3), np.uint8)], _spec("tiny", resize_impl=impl))
    for impl in ("pillow_uint8", "cv2_uint8"):
        assert uint8_refusal(_spec("tiny", resize_impl=impl).preprocess) is None
    code = export_cli.main(["--preset", "tiny", "--random-init", "--set", "preprocess.resize_impl=skimage_float",
                            "--input-format", "uint8", "-o", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "skimage_float" in err[0] and not (tmp_path / "x.onnx").exists()


def test_a_uint8_engine_runs_through_the_tensorrt_backend_with_pooled_page_locked_outputs(  # type: ignore[no-untyped-def]
        demo_pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """No TensorRT here: test_trt_engine_without_sidecar's fake engine (ONNX Runtime behind the
    TensorRT and cuda_rt calls), taught a uint8 input. The TensorRT backend reads the (N, H, W, 4)
    uint8 binding, pads to its fixed size, and the pipeline's pooled host_outputs() sets receive
    the D2H copies: detections equal the float model's in ONNX Runtime."""
    import sys
    import types

    import test_trt_engine_without_sidecar as fake
    import test_trt_output_allocator as fakes

    from retinanet_trt.runtime.backends.trt_backend import TrtBackend
    from retinanet_trt.tensorrt import cuda as cuda_rt
    from retinanet_trt.tensorrt import engine as trt_engine

    class Uint8Engine(fake.OrtEngine):
        def get_tensor_dtype(self, name: str):  # type: ignore[no-untyped-def]
            return types.SimpleNamespace(name="UINT8" if name == self.io[0][0] else "FLOAT")

        def create_execution_context(self):  # type: ignore[no-untyped-def]
            return Uint8Context(self)

    class Uint8Context(fake.OrtContext):
        def execute_async_v3(self, stream: int) -> bool:
            name, _, shape = self.engine.io[0]
            images = np.frombuffer(fakes.MEMORY[self.addresses[name]], np.uint8, count=int(np.prod(shape))).reshape(shape)
            for out, value in zip(self.engine.session.get_outputs(), self.engine.session.run(None, {name: images.copy()})):
                fakes._write(self.addresses[out.name], np.ascontiguousarray(value, np.float32))
            return True

    fakes.MEMORY.clear()
    for name, value in {
        "set_device": lambda device: None, "device_info": lambda device: {"name": "Fake GPU"},
        "Stream": fakes._Stream, "Event": fakes._Event, "DeviceBuffer": fakes._Buffer, "PinnedBuffer": fakes._Buffer,
        "copy_h2d_async": fakes._copy("h2d"), "copy_d2h_async": fakes._copy("d2h"),
    }.items():
        monkeypatch.setattr(cuda_rt, name, value)
    monkeypatch.setattr(trt_engine, "available", lambda: (True, "TensorRT (fake) on Fake GPU"))
    monkeypatch.setitem(sys.modules, "tensorrt", fakes._fake_tensorrt(Uint8Engine(demo_pair[1])))  # type: ignore[arg-type]
    engine = demo_pair[1].with_suffix(".engine")
    engine.write_bytes(b"plan")
    backend = TrtBackend(engine, onnx=demo_pair[1])
    assert (backend.input_format, backend.fixed_input_hw) == ("uint8_nhwc", (256, 320))
    from retinanet_trt.demo.synthetic import iter_samples

    images = [s.image for s in iter_samples(5, 2, split="val")]
    trt, ort = Detector(backend), Detector.load(demo_pair[0], "ort-cpu")
    got = list(trt.stream(images, workers=2))
    assert backend._pinned_sets  # the pool's page-locked sets took the D2H copies
    want = ort(images)
    assert [r.detections.scores.tobytes() for r in got] == [d.scores.tobytes() for d in want]
    assert sum(len(d) for d in want) > 5
    with pytest.raises(UsageError, match=r"\(N, H, W, 4\) uint8"):
        backend.run(np.zeros((1, 3, 256, 320), np.float32))
