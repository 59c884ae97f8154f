"""The synthetic shapes dataset: determinism, valid COCO json, boxes inside images, tiny-preset ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from retinanet_trt.demo.synthetic import (
    SyntheticConfig,
    _rasterize,
    _shape_geometry,
    category_ids,
    generate_dataset,
    iter_samples,
)
from retinanet_trt.spec.presets import tiny


def test_same_seed_same_images_other_seed_or_split_differs() -> None:
    a = list(iter_samples(3, seed=7))
    b = list(iter_samples(3, seed=7))
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.boxes, y.boxes)
        assert np.array_equal(x.labels, y.labels)
    other_seed = next(iter_samples(1, seed=8))
    other_split = next(iter_samples(1, seed=7, split="val"))
    assert not np.array_equal(a[0].image, other_seed.image)
    assert not np.array_equal(a[0].image, other_split.image)
    # Image i is the same whether generated alone or in a run.
    assert np.array_equal(next(iter_samples(1, seed=7, start=2)).image, a[2].image)


def test_boxes_labels_and_sizes_follow_the_config() -> None:
    cfg = SyntheticConfig(height_range=(200, 240), width_range=(220, 260), size_range=(16, 64))
    n_objects = 0
    for s in iter_samples(20, seed=3, config=cfg):
        h, w, _ = s.image.shape
        assert 200 <= h <= 240 and 220 <= w <= 260 and s.image.dtype == np.uint8
        assert s.boxes.shape == (len(s.labels), 4) and s.boxes.dtype == np.float32
        assert (s.boxes[:, :2] >= 0).all() and (s.boxes[:, 2] <= w).all() and (s.boxes[:, 3] <= h).all()
        long_side = np.maximum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1])
        assert ((long_side > 16 - 1e-3) & (long_side < 64 + 1e-3)).all()
        assert set(s.labels.tolist()) <= set(category_ids())
        n_objects += len(s.labels)
    assert n_objects >= 40  # a few shapes per image on average


def test_boxes_are_tight_around_the_rendered_shapes() -> None:
    rng = np.random.default_rng(0)
    for label in category_ids():
        for _ in range(5):
            verts, bw, bh = _shape_geometry(rng, SyntheticConfig(), label)
            box = [60 - bw / 2, 70 - bh / 2, 60 + bw / 2, 70 + bh / 2]
            alpha = _rasterize(verts, box, (0, 0), (160, 140))
            ys, xs = np.nonzero(alpha > 0)
            # Pixel i covers [i, i+1): the covered extent is within a pixel of the box, plus one 1/4
            # pixel subsample for PIL's rounding of float coordinates.
            extent = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert np.allclose(extent, box, atol=1.25), (label, extent, box)


def test_coco_json_is_valid_and_matches_the_tiny_preset(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = generate_dataset(tmp_path, 8, seed=5, split="val")
    data = json.loads(path.read_text())
    spec = tiny()
    assert [c["id"] for c in data["categories"]] == spec.postprocess.label_map
    assert [c["name"] for c in data["categories"]] == spec.postprocess.class_names
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 8 and len(coco.getAnnIds()) > 0
    for info in coco.imgs.values():
        with Image.open(path.parent / info["file_name"]) as img:
            assert img.size == (info["width"], info["height"]) and img.mode == "RGB"
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=info["id"])):
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= info["width"] and y + h <= info["height"] and w > 0 and h > 0
    # The written images are the in-memory ones, losslessly.
    first = next(iter_samples(1, seed=5, split="val"))
    assert np.array_equal(np.asarray(Image.open(path.parent / coco.imgs[1]["file_name"])), first.image)
    # Ground truth scored against itself is a perfect 1.0 mAP.
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in coco.dataset["annotations"]]
    evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == 1.0
