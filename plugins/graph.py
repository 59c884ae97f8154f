"""A small ONNX graph builder over onnx.helper: readable, unique node and tensor names.

Every node gets the name `<prefix>/<scope>/<Op>` (e.g. `post/p3/TopK`), so TensorRT layer names
and profiler rows can be attributed to the post-process and to its FPN level.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
INT32 = TensorProto.INT32
INT64 = TensorProto.INT64


class GraphBuilder:
    """Appends nodes and initializers to `graph`; names are unique within it."""

    def __init__(self, graph: onnx.GraphProto, prefix: str = "post") -> None:
        self.graph = graph
        self.prefix = prefix
        self._scope = ""
        self._used: set[str] = {n.name for n in graph.node} | {o for n in graph.node for o in n.output}
        self._used |= {t.name for t in graph.initializer} | {i.name for i in graph.input}

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Nodes made inside get `<prefix>/<name>/...` names (e.g. one scope per FPN level)."""
        previous, self._scope = self._scope, name
        try:
            yield
        finally:
            self._scope = previous

    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._used:
            name = f"{base}_{i}"
            i += 1
        self._used.add(name)
        return name

    def _base(self, what: str) -> str:
        return "/".join(p for p in (self.prefix, self._scope, what) if p)

    def const(self, value: Any, dtype: np.dtype | type, what: str = "const") -> str:
        """An initializer holding `value` as `dtype`; returns its name."""
        name = self._unique(self._base(what))
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, outputs: Sequence[str] | None = None,
           **attrs: Any) -> Any:
        """Add one node; returns its output name, or the list of names when it has several.

        outputs: explicit output names (graph outputs, a plugin's outputs); by default they are
        derived from the node name."""
        node_name = self._unique(self._base(op_type))
        if outputs is None:
            outputs = [node_name] if n_out == 1 else [f"{node_name}:{i}" for i in range(n_out)]
        self._used.update(outputs)
        self.graph.node.append(helper.make_node(op_type, list(inputs), list(outputs), name=node_name, **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    # ------------------------------------------------------------------ shorthands
    def shape_dim(self, tensor: str, axis: int) -> str:
        """Dimension `axis` of `tensor` as a 1-D int64 tensor of one element."""
        # Shape + Gather rather than Shape(start, end), which needs opset 15.
        return self.op("Gather", [self.op("Shape", [tensor]), self.const([axis], np.int64, "axis")], axis=0)

    def reshape(self, tensor: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", [tensor, self.const(list(shape), np.int64, "shape")])

    def unsqueeze(self, tensor: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", [tensor, self.const(list(axes), np.int64, "axes")])

    def cast(self, tensor: str, to: int) -> str:
        return self.op("Cast", [tensor], to=to)
