"""trt-infer writes one annotated PNG per input, never overwriting another's (issue 17, part 4).

tests/test_file_safety.py covers a/x.png, b/x.png and a/x.jpg given as files; these add nested
folders, folders given as inputs, and a strict check that detections.json names every image's
source path beside its own annotated PNG, with images the bundled demo model really detects
objects in (a random-weight model finds none, and then there is nothing to check).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet_trt.cli import infer as infer_cli
from retinanet_trt.demo.synthetic import iter_samples
from retinanet_trt.scoring.detect_files import annotated_names


def _shapes(path: Path, index: int) -> Path:
    """A synthetic demo image (shapes the bundled demo model detects), a different one per index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = next(iter_samples(1, seed=0, split="val", start=index))
    Image.fromarray(sample.image).save(path)
    return path


LAYOUTS = {
    # name: (image files to create, what to pass to trt-infer, relative to tmp_path)
    "two_folders": (["a/x.png", "b/x.png"], ["a/x.png", "b/x.png"]),
    "same_stem_other_extension": (["a/x.png", "a/x.jpg", "b/x.png"], ["a/x.png", "a/x.jpg", "b/x.png"]),
    "nested": (["x.png", "sub/x.png", "sub/deeper/x.png", "sub/deeper/x.jpg"],
               ["x.png", "sub/x.png", "sub/deeper/x.png", "sub/deeper/x.jpg"]),
    "folders_as_inputs": (["a/x.png", "a/y.png", "a/nested/x.png", "b/x.png"], ["a", "a/nested", "b"]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_input_keeps_its_own_annotated_png(layout: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    files, args = LAYOUTS[layout]
    images = tmp_path / "in"
    created = {rel: _shapes(images / rel, index) for index, rel in enumerate(files)}
    monkeypatch.chdir(images)  # relative inputs, as typed on a command line
    out = tmp_path / "out"
    assert infer_cli.main(["demo", *args, "-o", str(out), "--min-score", "0.3"]) == 0

    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(pngs) == len(files), pngs  # one per input: none overwritten
    results = json.loads((out / "detections.json").read_text())
    by_source: dict[str, set[str]] = {}
    for r in results:
        by_source.setdefault(r["file_name"], set()).add(r["annotated"])
    # Each source path (as given) has exactly one annotated PNG, its own, and it exists.
    assert set(by_source) == set(files) and all(len(v) == 1 for v in by_source.values()), by_source
    annotated = {src: next(iter(v)) for src, v in by_source.items()}
    assert len(set(annotated.values())) == len(annotated)
    assert set(annotated.values()) <= set(pngs)
    # The PNG drawn for an image is that image (its pixels, boxes aside), not another input's.
    sources = {src: np.asarray(Image.open(path).convert("RGB"), np.float32) for src, path in created.items()}
    for src, png in annotated.items():
        assert Path(png).name == f"{Path(src).name}.det.png"
        drawn = np.asarray(Image.open(out / png).convert("RGB"), np.float32)
        distance = {other: float(np.abs(drawn - pixels).mean()) if pixels.shape == drawn.shape else np.inf
                    for other, pixels in sources.items()}
        assert min(distance, key=distance.__getitem__) == src, (src, distance)


def test_annotated_names_are_distinct_and_keep_the_folders(tmp_path: Path) -> None:
    rels = ["x.png", "x.jpg", "x.png.det.png", "a/x.png", "a/b/x.png", "b/x.png", "b/a/x.png"]
    paths = [tmp_path / r for r in rels]
    names = annotated_names(paths)
    assert [names[p] for p in paths] == [f"{r}.det.png" for r in rels]
    assert annotated_names([tmp_path / "only" / "x.png"]) == {tmp_path / "only" / "x.png": "x.png.det.png"}
