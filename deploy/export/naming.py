"""Readable ONNX node names that carry their part and FPN level, e.g. `p4/cls_tower.1/conv/Conv`.

The head is shared over levels, so the exporter's scope names (`/head/cls_tower/...`) repeat for
every level. The level of a node is therefore found from the graph itself: a node whose results
reach only the outputs of level l (cls_pl, box_pl) belongs to level l. The part (backbone, fpn,
head) comes from the module scope in the exporter's name. TensorRT keeps ONNX node names in its
layer names, so profiler rows can be attributed with `node_group`.
"""

from __future__ import annotations

import re
from collections import defaultdict

import onnx

PARTS = ("backbone", "fpn", "head")
_LEVEL_OUTPUT = re.compile(r"^(?:cls|box)_p(\d)$")
_GROUP_PREFIX = re.compile(r"^(backbone|fpn|p\d|post)/")  # post: in-graph decode + NMS (plugins/)


def _levels_reached(graph: onnx.GraphProto) -> dict[int, set[int]]:
    """Node index -> the FPN levels whose outputs the node's results flow into."""
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers[name].append(i)
    output_level = {o.name: int(m.group(1)) for o in graph.output if (m := _LEVEL_OUTPUT.match(o.name))}
    reached: dict[int, set[int]] = {}
    for i in reversed(range(len(graph.node))):  # exported graphs are topologically sorted
        levels: set[int] = set()
        for out in graph.node[i].output:
            if out in output_level:
                levels.add(output_level[out])
            for j in consumers.get(out, []):
                levels |= reached.get(j, set())
        reached[i] = levels
    return reached


def _scope_parts(name: str) -> list[str]:
    """'/head/cls_tower/cls_tower.0/conv/Conv_3' -> ['head', 'cls_tower.0', 'conv', 'Conv'].

    Drops a scope segment that the next one repeats as its prefix (the exporter writes
    'layer1/layer1.0'), and the numeric suffixes the exporter adds to repeated calls of a shared
    module ('cls_tower.0_2'); our module names never end in '_<digits>'."""
    segments = [re.sub(r"_\d+$", "", s) for s in name.strip("/").split("/") if s]
    return [s for i, s in enumerate(segments) if not (i + 1 < len(segments) and segments[i + 1].startswith(s + "."))]


def tag_node_names(model: onnx.ModelProto) -> dict[str, int]:
    """Rename every node in place to `<group>/<scope>/<Op>` where group is backbone, fpn or p{l}
    (the head at level l); return the node count per group. Names stay unique."""
    graph = model.graph
    reached = _levels_reached(graph)
    used: dict[str, int] = {}
    counts: dict[str, int] = defaultdict(int)
    for i, node in enumerate(graph.node):
        parts = _scope_parts(node.name) or [node.op_type]
        part = parts[0] if parts[0] in PARTS else None
        levels = reached[i]
        if part == "head" and len(levels) == 1:
            group = f"p{next(iter(levels))}"
            rest = parts[1:]
        elif part in ("backbone", "fpn"):
            group, rest = part, parts[1:]
        else:
            group, rest = "other", parts if part is None else parts[1:]
        base = "/".join([group, *rest]) if rest else f"{group}/{node.op_type}"
        n = used.get(base, 0)
        used[base] = n + 1
        node.name = base if n == 0 else f"{base}_{n}"
        counts[group] += 1
    return dict(counts)


def node_group(name: str) -> str:
    """The group a node or TensorRT layer name belongs to: 'backbone', 'fpn', 'p3'..'p7', 'post' (the
    in-graph post-process of end-to-end models) or 'other'.

    TensorRT names fused layers by joining the names of the nodes it fused with ' + '; a fused layer
    whose parts span groups is reported as 'mixed'."""
    groups = {m.group(1) if (m := _GROUP_PREFIX.match(piece.strip())) else "other" for piece in name.split(" + ")}
    if len(groups) == 1:
        return groups.pop()
    groups.discard("other")
    return groups.pop() if len(groups) == 1 else "mixed"
