"""Calibration sets: an image folder, a COCO json or `demo` (the synthetic shapes generator).

Images go through the runner's own pre-process (retinanet_trt.runtime.preprocess) with the spec
stored in the ONNX file, so the calibrated ranges are those the deployed model sees. Sampling is
deterministic: a seeded permutation of the set, walked until N images were read and fit the
model's input; unreadable images and ones that do not fit a static input are skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import read_json
from retinanet_trt.runtime.images import ImageLoadError, LoadedImage, find_images, load_image
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.runtime.resize_plan import unfit_reason
from retinanet_trt.spec import ModelSpec

DEMO = "demo"
DEMO_CALIB_SPLIT = "calib"  # never the split the demo model trains or is evaluated on


@dataclass
class CalibSource:
    """Where a calibration set's images come from.

    kind: "folder", "coco" or "demo"; paths: the image files (folder, coco); annotations: the COCO
    json (coco); image_ids: COCO image id per path; root: the folder file_name entries are relative to.
    """

    kind: str
    name: str
    paths: list[Path] = field(default_factory=list)
    annotations: Path | None = None
    image_ids: list[int] = field(default_factory=list)
    root: Path | None = None


@dataclass
class _Selection:
    """The images chosen for calibration and the ones skipped, with the digest of their bytes."""

    picked: list[LoadedImage]
    sources: list[str]
    digest: str
    unreadable: list[str]
    unfit: list[str]


class CalibImages:
    """Calibration images, their digest and an account of how they were chosen.

    digest: sha256 over the images' bytes for files; for `demo`, over what draws them (see
    demo_digest). sources: the images used, in order; inputs: one (B, 3, H, W) float32 array per
    model run. Demo images are drawn, and all inputs pre-processed, on first use only, so a rerun
    whose ranges and report come from the caches does neither.
    """

    def __init__(self, digest: str, select: Callable[[], _Selection],
                 prepare: Callable[[list[LoadedImage]], list[np.ndarray]]) -> None:
        self.digest = digest
        self._select, self._prepare = select, prepare
        self._selection: _Selection | None = None
        self._inputs: list[np.ndarray] | None = None

    def _chosen(self) -> _Selection:
        if self._selection is None:
            self._selection = self._select()
        return self._selection

    @property
    def sources(self) -> list[str]:
        return self._chosen().sources

    @property
    def skipped_unreadable(self) -> list[str]:
        return self._chosen().unreadable

    @property
    def skipped_unfit(self) -> list[str]:
        return self._chosen().unfit

    @property
    def inputs(self) -> list[np.ndarray]:
        if self._inputs is None:
            self._inputs = self._prepare(self._chosen().picked)
        return self._inputs

    def summary(self) -> dict[str, object]:
        return {
            "images_used": len(self.sources),
            "skipped_unreadable": len(self.skipped_unreadable),
            "skipped_unfit": len(self.skipped_unfit),
            "examples_skipped": (self.skipped_unreadable + self.skipped_unfit)[:5],
        }


def demo_digest(count: int, seed: int) -> str:
    """sha256 over what draws the demo calibration images: the generator's source, its split,
    seed and count, and the numpy and Pillow versions. The images are a pure function of these,
    so hashing them stands for hashing the pixels without drawing them (0.4 s for 64 images)."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("retinanet_trt.demo.synthetic")
    code = Path(spec.origin).read_bytes() if spec and spec.origin else b""
    payload = {"set": DEMO, "split": DEMO_CALIB_SPLIT, "seed": seed, "count": count,
               "generator": hashlib.sha256(code).hexdigest(),
               "numpy": importlib.metadata.version("numpy"), "pillow": importlib.metadata.version("pillow")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def open_calib_set(calib: str, image_root: str | Path | None = None) -> CalibSource:
    """`demo`, a folder of images or a COCO json -> CalibSource; UsageError for anything else."""
    if calib == DEMO:
        return CalibSource("demo", DEMO)
    path = Path(calib)
    if path.is_dir():
        paths = find_images([path])
        if not paths:
            raise UsageError(f"calibration folder {path} holds no images (looked for .jpg, .png, ...)")
        return CalibSource("folder", str(path), paths)
    if path.is_file() and path.suffix.lower() == ".json":
        return _open_coco(path, Path(image_root) if image_root else path.parent)
    if path.exists():
        raise UsageError(f"--calib {calib}: give an image folder, a COCO .json or 'demo'")
    raise UsageError(f"--calib {calib}: no such folder or file (give an image folder, a COCO .json or 'demo')")


def _open_coco(path: Path, root: Path) -> CalibSource:
    coco = read_json(path, "--calib", "give a COCO instances json, an image folder or demo")
    try:
        entries = [(int(im["id"]), str(im["file_name"])) for im in coco["images"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a COCO json with an 'images' list ({type(exc).__name__}: {exc})") from exc
    if not entries:
        raise UsageError(f"{path}: the COCO json lists no images")
    entries.sort()
    return CalibSource("coco", str(path), [root / name for _, name in entries], path, [i for i, _ in entries], root)


def _demo_images(count: int, seed: int) -> Iterator[tuple[str, LoadedImage, bytes]]:
    # Imported here: the generator draws shapes with Pillow and is only needed for `demo`.
    from retinanet_trt.demo.synthetic import iter_samples

    for sample in iter_samples(count, seed, DEMO_CALIB_SPLIT):
        name = f"demo:{DEMO_CALIB_SPLIT}:{seed}:{sample.index}"
        yield name, LoadedImage(sample.image, name), sample.image.tobytes()


def _file_images(paths: list[Path], seed: int) -> Iterator[tuple[str, LoadedImage | ImageLoadError, bytes]]:
    for i in np.random.default_rng(seed).permutation(len(paths)):
        path = paths[int(i)]
        try:
            data = path.read_bytes()
            yield str(path), load_image(path), data
        except (OSError, ImageLoadError) as exc:
            err = exc if isinstance(exc, ImageLoadError) else ImageLoadError(f"{path}: {exc}")
            yield str(path), err, b""


def load_calibration(
    source: CalibSource,
    spec: ModelSpec,
    count: int,
    seed: int,
    input_hw: tuple[int, int] | None,
    batch: int = 1,
    progress: bool = True,
) -> CalibImages:
    """Up to `count` images that are readable and fit, sampled deterministically by `seed`.

    Files are read and checked now (their digest is over their bytes); demo images are drawn on
    first use of `.sources` or `.inputs`, and inputs are pre-processed on first use.

    input_hw: the model's static (H, W), or None for a dynamic input (each run then takes the
    spec's padded size). batch: the model's static batch size; a last partial batch is filled
    up by repeating its first images, which leaves min/max ranges unchanged.
    """
    if count < 1:
        raise UsageError(f"--calib-images must be >= 1, got {count}")

    def select() -> _Selection:
        return _select(source, spec, count, seed, input_hw, progress)

    def prepare(picked: list[LoadedImage]) -> list[np.ndarray]:
        inputs = []
        for start in range(0, len(picked), batch):
            chunk = [picked[(start + k) % len(picked)] for k in range(batch)]
            inputs.append(preprocess(chunk, spec, input_hw).images)
        return inputs

    if source.kind == "demo":
        return CalibImages(demo_digest(count, seed), select, prepare)
    chosen = select()  # files: the digest is over the bytes of the files chosen
    return CalibImages(chosen.digest, lambda: chosen, prepare)


def _select(source: CalibSource, spec: ModelSpec, count: int, seed: int, input_hw: tuple[int, int] | None,
            progress: bool) -> _Selection:
    """Walk the seeded stream of images until `count` are readable and fit; UsageError if none do."""
    stream = _demo_images(count, seed) if source.kind == "demo" else _file_images(source.paths, seed)
    total = count if source.kind == "demo" else min(count, len(source.paths))
    picked: list[LoadedImage] = []
    sources: list[str] = []
    digest = hashlib.sha256()
    unreadable: list[str] = []
    unfit: list[str] = []
    bar = tqdm(total=total, desc="calibration images", unit="img", disable=not progress, leave=False)
    try:
        for name, image, data in stream:
            if isinstance(image, ImageLoadError):
                unreadable.append(str(image))
                continue
            reason = unfit_reason(image, spec.preprocess, input_hw)
            if reason:  # too thin, or too large for a static input with preprocess.oversize 'refuse'
                unfit.append(f"{name}: {reason}")
                continue
            picked.append(image)
            sources.append(name)
            digest.update(hashlib.sha256(data).digest())
            bar.update(1)
            if len(picked) == count:
                break
    finally:
        bar.close()
    if not picked:
        detail = []
        if unreadable:
            detail.append(f"{len(unreadable)} unreadable (first: {unreadable[0]})")
        if unfit:
            detail.append(f"{len(unfit)} cannot become network input (first: {unfit[0]}); export with --dynamic or "
                          "a larger --input-size")
        raise UsageError(f"no usable calibration images in {source.name}: " + "; ".join(detail or ["the set is empty"]))
    return _Selection(picked, sources, digest.hexdigest(), unreadable, unfit)
