"""Caffe .prototxt + .caffemodel (placeholder while the importer is written)."""

from __future__ import annotations

from pathlib import Path

NAME = "caffe"


def import_caffe(caffemodel: Path, prototxt: Path | None):  # type: ignore[no-untyped-def]
    raise NotImplementedError
