"""Image loading (modes, EXIF, corrupt files) and the spec-driven pre-process (sizes, order, padding)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.images import ImageLoadError, find_images, load_image, load_images
from retinanet_trt.runtime.preprocess import iter_batches, normalize, preprocess
from retinanet_trt.runtime.resize_plan import network_input_hw, padded_side, resized_hw
from retinanet_trt.spec import ModelSpec, PreprocessSpec
from retinanet_trt.spec.presets import r50_fpn1024_1class, retinanet_r50_fpn, tiny, torchvision_v1

RGB = (200, 100, 50)


def _save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    img.save(path, **kwargs)
    return path


# ---------------------------------------------------------------------------------- loading
def test_grayscale_png_becomes_three_equal_channels(tmp_path: Path) -> None:
    path = _save(Image.fromarray(np.full((5, 7), 77, np.uint8), mode="L"), tmp_path / "grey.png")
    px = load_image(path).pixels
    assert px.shape == (5, 7, 3) and px.dtype == np.uint8 and (px == 77).all()


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = RGB
    rgba[..., 3] = 0  # fully transparent: the colour is kept, as detectron2/torchvision loaders do
    px = load_image(_save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png")).pixels
    assert px.shape == (4, 6, 3) and (px == RGB).all()


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    px = load_image(path).pixels
    assert px[0, :, 0].tolist() == [0, 1, 128, 255]


def test_palette_png_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (3, 2))
    pal.putpalette([0, 0, 0, *RGB] + [0] * (256 * 3 - 6))
    pal.putdata([1, 1, 1, 0, 0, 0])
    plain = load_image(_save(pal, tmp_path / "p.png")).pixels
    assert (plain[0] == RGB).all() and (plain[1] == 0).all()
    transparent = load_image(_save(pal, tmp_path / "pt.png", transparency=0)).pixels
    assert (transparent == plain).all()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 20 (h) x 40 (w) with a red block top-left; orientation 6 means "rotate 90 deg clockwise".
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:10, :10] = (255, 0, 0)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    path = _save(img, tmp_path / "rotated.jpg", exif=exif, quality=95)
    px = load_image(path).pixels
    assert px.shape == (40, 20, 3)
    assert px[2:8, 12:18, 0].mean() > 200 and px[2:8, 2:8, 0].mean() < 50  # now top-right
    assert load_image(Image.open(path)).pixels.shape == (40, 20, 3)  # PIL input too


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((3, 4), 9, np.uint8), 9),
        (np.full((3, 4, 1), 9, np.uint8), 9),
        (np.full((3, 4, 4), 9, np.uint8), 9),
        (np.full((3, 4, 3), 65535, np.uint16), 255),
        (np.full((3, 4, 3), 0.5, np.float32), 128),
    ],
)
def test_array_inputs(array: np.ndarray, expected: int) -> None:
    loaded = load_image(array)
    assert loaded.pixels.shape == (3, 4, 3) and (loaded.pixels == expected).all() and loaded.source == "<array>"


@pytest.mark.parametrize("array", [np.full((3, 4, 3), 2.0, np.float32), np.zeros((3, 4, 2), np.uint8), np.zeros(5)])
def test_bad_arrays_are_refused(array: np.ndarray) -> None:
    with pytest.raises(ImageLoadError, match="<array>"):
        load_image(array)


def test_corrupt_truncated_and_missing_files_name_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    for bad in (junk, cut, tmp_path / "missing.png"):
        with pytest.raises(ImageLoadError, match=bad.name) as info:
            load_image(bad)
        assert isinstance(info.value, UsageError)


def test_batch_run_goes_on_past_a_bad_file(tmp_path: Path) -> None:
    good = [_save(Image.new("RGB", (30, 20), RGB), tmp_path / f"{i}.png") for i in range(3)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    items = [good[0], bad, good[1], good[2]]
    loaded, failed = load_images(items)
    assert [im.source for im in loaded] == [str(p) for p in good]
    assert [f.source for f in failed] == [str(bad)] and "bad.jpg" in failed[0].error

    failures: list = []
    batches = list(iter_batches(items, tiny(), batch_size=2, failures=failures))
    assert [len(b.metas) for b in batches] == [2, 1] and len(failures) == 1
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        list(iter_batches(items, tiny(), batch_size=2))


def test_find_images_lists_folders_sorted(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_images([tmp_path])] == ["a.JPG", "b.png"]
    with pytest.raises(ImageLoadError, match="nope"):
        find_images([tmp_path / "nope"])


# ---------------------------------------------------------------------------------- sizes
def _pre(rounding: str, min_size: int = 800, max_size: int = 1333) -> PreprocessSpec:
    return PreprocessSpec(min_size=min_size, max_size=max_size, rounding=rounding)


@pytest.mark.parametrize(
    ("hw", "floor", "half_up", "rnd"),
    [
        ((480, 640), (800, 1066), (800, 1067), (800, 1067)),  # 640 * 5/3 = 1066.67
        ((500, 1500), (444, 1332), (444, 1333), (444, 1333)),  # long side capped at 1333
        ((1000, 1000), (800, 800), (800, 800), (800, 800)),
        ((427, 640), (799, 1199), (800, 1199), (800, 1199)),  # torchvision's float32 scale gives 799
        ((640, 427), (1199, 799), (1199, 800), (1199, 800)),
    ],
)
def test_shortest_edge_rounding_per_framework(hw, floor, half_up, rnd) -> None:
    assert resized_hw(hw, _pre("floor")) == floor
    assert resized_hw(hw, _pre("round_half_up")) == half_up
    assert resized_hw(hw, _pre("round")) == rnd


def test_exact_halves_split_the_three_rules() -> None:
    # 200x301 -> scale 0.5 -> 150.5: floor 150, int(x + 0.5) 151, round-half-even 150.
    assert [resized_hw((200, 301), _pre(r, 100, 1000)) for r in ("floor", "round_half_up", "round")] == [
        (100, 150), (100, 151), (100, 150)]
    # 200x303 -> 151.5: floor 151, half-up 152, half-even 152.
    assert [resized_hw((200, 303), _pre(r, 100, 1000))[1] for r in ("floor", "round_half_up", "round")] == [
        151, 152, 152]


def test_floor_matches_torch_interpolate_sizes() -> None:
    torch = pytest.importorskip("torch")
    pre = torchvision_v1().preprocess
    for hw in [(103, 150), (195, 260), (333, 500), (427, 640), (480, 640), (612, 612), (900, 2000), (1333, 800)]:
        shape = torch.tensor(hw)
        scale = torch.min(800.0 / shape.min().float(), 1333.0 / shape.max().float()).item()
        x = torch.empty(1, 1, *hw, device="meta")
        out = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bilinear", recompute_scale_factor=True)
        assert resized_hw(hw, pre) == tuple(out.shape[-2:]), hw


def test_yhenon_sizes_and_padding() -> None:
    # yhenon: 608/1024, Python round, pad 32 - dim % 32 (a full 32 when already divisible).
    pre = PreprocessSpec(min_size=608, max_size=1024, rounding="round", pad_extra_when_divisible=True)
    assert resized_hw((480, 640), pre) == (608, 811)  # 640 * 1.2667 = 810.67
    assert (padded_side(608, pre), padded_side(811, pre)) == (640, 832)
    assert padded_side(608, dataclasses.replace(pre, pad_extra_when_divisible=False)) == 608


def test_fixed_none_and_padding() -> None:
    spec = ModelSpec(preprocess=PreprocessSpec(resize="fixed", fixed_size=[600, 600], size_divisibility=0))
    assert network_input_hw((123, 456), spec) == (600, 600)
    spec.preprocess = PreprocessSpec(resize="none", size_divisibility=32)
    assert network_input_hw((123, 456), spec) == (128, 480)
    assert network_input_hw((480, 640), retinanet_r50_fpn()) == (800, 1088)
    assert padded_side(1066, PreprocessSpec(size_divisibility=128)) == 1152  # Detectron's coarsest stride


# ---------------------------------------------------------------------------------- values
def test_rgb_and_bgr_scale_mean_std() -> None:
    px = np.array([[[10, 20, 30]]], np.uint8)
    tv = normalize(px, torchvision_v1().preprocess)[:, 0, 0]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = [(v / 255 - m) / s for v, m, s in zip((10, 20, 30), mean, std, strict=True)]
    assert tv == pytest.approx(expected, rel=1e-5)
    bgr = normalize(px, retinanet_r50_fpn().preprocess)[:, 0, 0]
    assert bgr == pytest.approx([30 - 103.530, 20 - 116.280, 10 - 123.675], rel=1e-6)
    mb = normalize(px, r50_fpn1024_1class().preprocess)[:, 0, 0]
    assert mb == pytest.approx([30 - 102.9801, 20 - 115.9465, 10 - 122.7717], rel=1e-6)


def test_batch_of_mixed_sizes_pads_with_zeros_after_normalisation() -> None:
    spec = tiny()  # short 256, long <= 320, pad 32, RGB ImageNet mean/std
    a = np.full((256, 300, 3), 255, np.uint8)
    b = np.full((300, 256, 3), 255, np.uint8)
    batch = preprocess([a, b], spec)
    assert batch.images.shape == (2, 3, 320, 320) and batch.images.dtype == np.float32
    assert [m.resized_hw for m in batch.metas] == [(256, 300), (300, 256)]
    assert all(m.input_hw == (320, 320) and m.source == "<array>" for m in batch.metas)
    assert (batch.images[0, :, :256, :300] > 2).all()  # white, normalised
    assert (batch.images[0, :, 256:, :] == 0).all() and (batch.images[0, :, :, 300:] == 0).all()
    assert (batch.images[1, :, :, 256:] == 0).all()


def test_resize_uses_the_spec_size_and_keeps_uniform_colour() -> None:
    spec = tiny()
    batch = preprocess([np.full((128, 150, 3), RGB, np.uint8)], spec)
    meta = batch.metas[0]
    assert meta.original_hw == (128, 150) and meta.resized_hw == (256, 300) and meta.input_hw == (256, 320)
    expected = normalize(np.array([[RGB]], np.uint8), spec.preprocess)[:, 0, 0]
    assert np.allclose(batch.images[0, :, :256, :300].reshape(3, -1), expected[:, None], atol=1e-5)


def test_fixed_input_hw_pads_shrinks_or_refuses() -> None:
    spec = tiny()
    batch = preprocess([np.zeros((256, 256, 3), np.uint8)], spec, input_hw=(320, 384))
    assert batch.images.shape == (1, 3, 320, 384) and batch.metas[0].resized_hw == (256, 256)
    assert not batch.metas[0].shrunk
    # 256x320 resizes to itself, which is wider than 288: scaled by 288/320 to 230x288 (round(230.4)).
    shrunk = preprocess([np.zeros((256, 320, 3), np.uint8)], spec, input_hw=(256, 288)).metas[0]
    assert shrunk.shrunk and shrunk.resized_hw == (230, 288) and shrunk.input_hw == (256, 288)
    spec.preprocess.oversize = "refuse"
    with pytest.raises(ImageLoadError, match=r"<array>: 256x320 after the model's resize, larger than the fixed "
                                             r"network input 256x288 \(preprocess.oversize 'refuse'\)"):
        preprocess([np.zeros((256, 320, 3), np.uint8)], spec, input_hw=(256, 288))


def test_exif_rotated_file_gets_rotated_sizes(tmp_path: Path) -> None:
    img = Image.new("RGB", (64, 32), RGB)  # stored w=64, h=32
    exif = img.getexif()
    exif[0x0112] = 8  # rotate 90 deg counter-clockwise to display
    path = _save(img, tmp_path / "r.jpg", exif=exif)
    meta = preprocess([path], tiny()).metas[0]
    assert meta.original_hw == (64, 32) and meta.source == str(path)
    assert meta.resized_hw == (320, 160)  # short side to 256 would make the long 512 > 320: capped
