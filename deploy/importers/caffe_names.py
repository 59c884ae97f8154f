"""Layer names of a Caffe RetinaNet port, kept as data: the canonical name of each conv (the
maskrcnn-benchmark module name with '.' -> '_', e.g. backbone_fpn_fpn_inner3) and, in ALIASES, the
other spellings ports are known to use. This table is the one place to teach the importer a new
spelling; the dataflow (which blob a layer reads) still decides what a layer is, names only confirm.

The head runs once per level, so a port holds one copy of every head layer per level, each named
with a level tag ({l}: an underscore, a letter, then letters or digits, e.g. _p3, _P3 or _level3; the
seed's NetSpec port tags P3..P7 with the fpn_layer index, _p2 _p3 _p4 _p6 _p7). Which level a copy
belongs to is read from the graph, not from its tag.
"""

from __future__ import annotations

import re
from functools import cache

from retinanet_trt.errors import UsageError

# canonical name -> other spellings. {i}: fpn_inner / fpn_layer index (2, 3, 4 = C3, C4, C5); {t}: cls
# or bbox; {n}: the conv's index in maskrcnn-benchmark's tower Sequential (0, 2, 4, 6); {l}: a level tag.
ALIASES: dict[str, tuple[str, ...]] = {
    "backbone_fpn_fpn_inner{i}": ("backbone_fpn_fpn_inner{i}_lateral",),  # the seed's NetSpec port (inner3)
    "backbone_fpn_fpn_layer{i}": (),
    "backbone_fpn_top_blocks_p6": ("backbone_fpn_topblocks_p6",),  # the seed's NetSpec port
    "backbone_fpn_top_blocks_p7": ("backbone_fpn_topblocks_p7",),
    # head layers: one copy per level; the untagged name may serve one level
    "rpn_head_{t}_tower_{n}": ("rpn_head_{t}_tower_{n}{l}",  # rpn_head_cls_tower_0_p3
                               "rpn_head_{t}_tower{l}_{n}"),  # the seed's NetSpec port: rpn_head_cls_tower_p2_0
    "rpn_head_cls_logits": ("rpn_head_cls_logits{l}",),
    "rpn_head_bbox_pred": ("rpn_head_bbox_pred{l}",),
}
LEVEL_TAG = r"_[A-Za-z][A-Za-z0-9]*"


def _entry(template: str) -> tuple[str, ...]:
    if template not in ALIASES:
        raise KeyError(template)
    return (template, *ALIASES[template])


def spellings(template: str, **fields: object) -> list[str]:
    """Every accepted spelling of one layer, for messages ({l} shown as <level>, e.g. _p3)."""
    return [s.format(l="<level>", **fields) for s in _entry(template)]


@cache
def _pattern(template: str, fields: tuple[tuple[str, object], ...]) -> re.Pattern[str]:
    values = dict(fields)
    parts = []
    for s in _entry(template):
        literal = re.escape(s.format(l="\0", **values)).replace("\0", f"(?P<l>{LEVEL_TAG})")
        parts.append(f"(?:{literal})")
    # one named group per alternative is not allowed: number them
    text = "|".join(parts)
    count = iter(range(len(parts)))
    return re.compile(re.sub(r"\(\?P<l>", lambda _: f"(?P<l{next(count)}>", text))


def match(name: str, template: str, **fields: object) -> str | None:
    """The level tag of `name` if it spells `template` ("" for an untagged spelling), else None."""
    m = _pattern(template, tuple(sorted(fields.items()))).fullmatch(name)
    if m is None:
        return None
    return next((v for v in m.groupdict().values() if v), "")


def one_of(candidates: list[str], template: str, what: str, **fields: object) -> str | None:
    """The one name among `candidates` that spells `template`; None if none does, UsageError if several."""
    found = [c for c in candidates if match(c, template, **fields) is not None]
    if len(found) > 1:
        raise UsageError(f"layers {', '.join(map(repr, found))} could each be {what}; keep one "
                         f"(accepted names: {', '.join(spellings(template, **fields))})")
    return found[0] if found else None
