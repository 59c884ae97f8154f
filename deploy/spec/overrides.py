"""Changes to a model's spec at export: a partial spec file, `--set key=value`, class names, resize.

Every override is applied to the spec's JSON form and the result goes through the same loader
as a spec file (ModelSpec.from_dict), so an override is validated exactly like a spec file.
Overrides may change what the weights do not fix (pre-process, post-process, names, labels);
a changed architecture is caught when the weights are loaded into the model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from retinanet_trt.errors import UsageError
from retinanet_trt.spec import ModelSpec


def merge(base: dict[str, Any], override: dict[str, Any], where: str = "spec") -> dict[str, Any]:
    """base with override's keys replaced recursively (objects merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in out:
            known = ", ".join(sorted(out))
            raise UsageError(f"unknown field {where}.{key} in the override; known: {known}")
        if isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(item: str) -> dict[str, Any]:
    """'postprocess.score_thresh=[0.3,0.3,0.3,0.3,0.3]' -> nested dict; the value is JSON, or a
    plain string when it is not (so `preprocess.channel_order=RGB` needs no quotes)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {item!r}: write KEY=VALUE, e.g. --set postprocess.nms_iou=0.6")
    try:
        value: Any = json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # not JSON (or absurdly nested): the plain string
        value = text
    node: dict[str, Any] = {}
    root = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return root


def read_class_names(path: Path) -> tuple[list[str], list[int] | None]:
    """(names, label ids or None) from a text file (one name per line) or a COCO json (its
    categories sorted by id; the ids become the label map)."""
    if not path.is_file():
        raise UsageError(f"--class-names {path} not found; give a text file (one name per line) or a COCO json")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            cats = json.loads(text)["categories"]
            cats = sorted(cats, key=lambda c: c["id"])
            return [str(c["name"]) for c in cats], [int(c["id"]) for c in cats]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"--class-names {path}: not a COCO json with categories (id, name) ({exc})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UsageError(f"--class-names {path} has no names; write one class name per line")
    return names, None


def class_name_override(path: Path, num_classes: int) -> dict[str, Any]:
    names, ids = read_class_names(path)
    if len(names) != num_classes:
        raise UsageError(f"--class-names {path} has {len(names)} names, the model has {num_classes} classes")
    post: dict[str, Any] = {"class_names": names}
    if ids is not None:
        post["label_map"] = ids
    return {"postprocess": post}


def merged(spec: ModelSpec, overrides: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The spec's JSON form with each (label, partial spec dict) merged in order, not yet validated."""
    data = spec.to_dict()
    for label, override in overrides:
        try:
            data = merge(data, override)
        except UsageError as exc:
            raise UsageError(f"{label}: {exc}") from None
    return data


def apply_overrides(spec: ModelSpec, overrides: list[tuple[str, dict[str, Any]]],
                    fixed: tuple[str, ...] = ()) -> ModelSpec:
    """spec with the overrides merged in order, validated as a spec file is. `fixed`: sections
    (e.g. "head") that the weights determine, which an override may not change."""
    data = merged(spec, overrides)
    labels = ", ".join(label for label, _ in overrides)
    changed = [s for s in fixed if data[s] != spec.to_dict()[s]]
    if changed:
        raise UsageError(f"{labels} changes {', '.join(changed)}, which the weights fix; override only "
                         "anchors, box_coder, preprocess and postprocess of a trained model")
    try:
        return ModelSpec.from_dict(data)
    except UsageError as exc:
        raise UsageError(f"after {labels}: {exc}") from None
