"""Image loading: paths, PIL images and arrays become (H, W, 3) uint8 RGB, whatever their mode.

Every framework reads images as 8-bit RGB (or BGR) after honouring the EXIF orientation
(detectron2's read_image, torchvision's decode_image with apply_exif_orientation), so one loader
gives every backend the same pixels. Channel order for the network is chosen later, in preprocess.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from retinanet_trt.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageLoadError(UsageError):
    """An image that cannot be read or converted; the message names the file (or "<array>")."""


@dataclass
class LoadedImage:
    """pixels: (H, W, 3) uint8 RGB; source: the file name, "<PIL>" or "<array>"."""

    pixels: np.ndarray
    source: str

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


@dataclass
class LoadFailure:
    """One input that could not be loaded in a batch run, and why."""

    source: str
    error: str


ImageInput = str | os.PathLike | Image.Image | np.ndarray | LoadedImage


def load_image(image: ImageInput) -> LoadedImage:
    """Any supported input -> LoadedImage (H, W, 3) uint8 RGB; raises ImageLoadError naming the input.

    Paths and PIL images are rotated by their EXIF orientation. Arrays are taken as RGB: (H, W)
    grey, (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped); uint8, uint16 (scaled to 8 bit) or
    float in [0, 1] (as torchvision tensors are).
    """
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, np.ndarray):
        return LoadedImage(_array_to_rgb8(image, "<array>"), "<array>")
    if isinstance(image, Image.Image):
        source = str(getattr(image, "filename", "") or "<PIL>")
        return LoadedImage(_pil_to_rgb8(image, source), source)
    if isinstance(image, (str, os.PathLike)):
        return _load_path(Path(image))
    raise ImageLoadError(
        f"unsupported image input of type {type(image).__name__}; pass a file path, a PIL image or a numpy array"
    )


def load_images(images: Iterable[ImageInput]) -> tuple[list[LoadedImage], list[LoadFailure]]:
    """Load every input, going on past ones that fail: (loaded, failures), both in input order."""
    loaded: list[LoadedImage] = []
    failures: list[LoadFailure] = []
    for item in images:
        try:
            loaded.append(load_image(item))
        except ImageLoadError as exc:
            failures.append(LoadFailure(_describe(item), str(exc)))
    return loaded, failures


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (not recursive) into a sorted list of image files.

    Folder entries are filtered by IMAGE_EXTENSIONS; files named explicitly are kept whatever their
    name, so a mislabelled or corrupt file is reported by the loader rather than silently skipped.
    """
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found.extend(sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        elif entry.exists():
            found.append(entry)
        else:
            raise ImageLoadError(f"{entry}: no such file or folder")
    return found


def _describe(item: object) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, LoadedImage):
        return item.source
    return "<PIL>" if isinstance(item, Image.Image) else "<array>"


def _load_path(path: Path) -> LoadedImage:
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a folder, not an image")
    return _decode(path, str(path))


def decode_image_bytes(data: bytes, source: str = "<bytes>", max_pixels: int | None = None) -> LoadedImage:
    """Encoded image bytes (JPEG, PNG, ...) -> LoadedImage, decoded exactly as a file of those bytes
    is (EXIF rotation included), so a server's detections equal trt-infer's on the file.

    max_pixels: refuse larger images (width x height, read from the header before decoding) with an
    ImageLoadError naming the size, so one request cannot make a server decode a gigapixel image.
    """
    if not data:
        raise ImageLoadError(f"{source}: empty (0 bytes), not an image")
    return _decode(io.BytesIO(data), source, max_pixels)


def _decode(fp: Path | io.BytesIO, source: str, max_pixels: int | None = None) -> LoadedImage:
    try:
        # Decompression-bomb warnings become errors: a 1-gigapixel input is a mistake here.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                if max_pixels is not None and img.width * img.height > max_pixels:
                    raise ImageLoadError(f"{source}: {img.width}x{img.height} pixels, more than the limit of "
                                         f"{max_pixels} pixels; send a smaller image")
                img.load()  # decode now, so truncated files fail here with the file's name
                pixels = _pil_to_rgb8(img, source)
    except ImageLoadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        detail = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))  # PIL names the buffer object
        raise ImageLoadError(f"{source}: cannot read image ({type(exc).__name__}: {detail})") from exc
    return LoadedImage(pixels, source)


def _pil_to_rgb8(img: Image.Image, source: str) -> np.ndarray:
    """PIL image of any mode -> (H, W, 3) uint8 RGB, after EXIF rotation."""
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's convert("RGB") clips 16-bit and float values at 255 instead of scaling them.
        # Mode "I" comes from 16-bit PNGs, so its values are taken as 0..65535; "F" as 0..1.
        return _array_to_rgb8(np.asarray(img), source, int_range=65535.0)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow warns on palette transparency converted straight to RGB
    if mode != "RGB":
        # Alpha is dropped, not composited, as detectron2 and torchvision loaders do.
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def _array_to_rgb8(arr: np.ndarray, source: str, int_range: float | None = None) -> np.ndarray:
    """(H, W), (H, W, 1|3|4) array -> (H, W, 3) uint8; 16-bit and float values are scaled to 0..255.

    int_range: the full-scale value of an integer array (default: uint16 max for 16-bit types).
    """
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[:, :, :3]
    elif arr.ndim != 2:
        raise ImageLoadError(f"{source}: array of shape {arr.shape} is not an image; expected (H, W) or (H, W, 1|3|4)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"{source}: empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype.kind in "ui" and (int_range is not None or arr.dtype.itemsize == 2):
        full = int_range if int_range is not None else float(np.iinfo(arr.dtype).max)
        out = np.clip(np.rint(arr.astype(np.float64) * (255.0 / full)), 0, 255).astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise ImageLoadError(f"{source}: float images must hold values in [0, 1]; scale 0..255 data to uint8 first")
        out = np.rint(arr * 255.0).astype(np.uint8)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    else:
        raise ImageLoadError(f"{source}: unsupported pixel type {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    if out.ndim == 2 or out.shape[2] == 1:
        out = np.repeat(out.reshape(out.shape[0], out.shape[1], 1), 3, axis=2)
    return np.ascontiguousarray(out)
