"""Choosing nodes by the level tags in their names: groups, FPN levels, predictors, globs, names.

trt-export names every node `<group>/<scope>/<Op>` with group backbone, fpn, p3..p7 (the shared
head at that level) or other (retinanet_trt.export.naming), so exclusions can be stated in the
model's own terms: `--exclude fpn`, `--exclude p3`, `--exclude 'p*/box_*'`, or one node name.
"""

from __future__ import annotations

import fnmatch

import onnx

from retinanet_trt.errors import UsageError
from retinanet_trt.export.naming import node_group

GROUP_NAMES = ("backbone", "fpn", "p3", "p4", "p5", "p6", "p7", "other")
PREDICTORS = "predictors"  # the final cls/box convs of every level: the default INT8 exclusion
HEAD = "head"  # all levels of the head


def is_predictor(name: str) -> bool:
    """The final cls/box predictor convs ('p3/cls_pred/Conv', 'p5/box_pred/Conv')."""
    return node_group(name).startswith("p") and name.split("/")[1:2] in (["cls_pred"], ["box_pred"])


def groups_present(model: onnx.ModelProto) -> list[str]:
    """The groups that the model's node names carry, in GROUP_NAMES order."""
    found = {node_group(n.name) for n in model.graph.node}
    return [g for g in GROUP_NAMES if g in found]


def select_nodes(model: onnx.ModelProto, tokens: list[str]) -> list[str]:
    """Node names matched by tokens: a group (backbone, fpn, p3..p7, other), 'head' (p3..p7),
    'predictors', a glob on node names ('p*/box_*'), or an exact node name.

    A token that matches nothing raises UsageError naming the groups the model has.
    """
    names = [n.name for n in model.graph.node]
    chosen: list[str] = []
    for token in tokens:
        if token in GROUP_NAMES:
            hits = [n for n in names if node_group(n) == token]
        elif token == HEAD:
            hits = [n for n in names if node_group(n) in ("p3", "p4", "p5", "p6", "p7")]
        elif token == PREDICTORS:
            hits = [n for n in names if is_predictor(n)]
        elif any(c in token for c in "*?["):
            hits = fnmatch.filter(names, token)
        else:
            hits = [n for n in names if n == token]
        if not hits:
            raise UsageError(
                f"--exclude {token!r} matches no node; use a group ({', '.join(groups_present(model))}), "
                f"'{HEAD}', '{PREDICTORS}', a node name or a glob such as 'p3/cls_*'"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return chosen
