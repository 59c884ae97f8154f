"""trt-export's Python API: PyTorch model -> folded, pool-fixed, simplified, named, checked ONNX."""

from __future__ import annotations

import io
import math
import resource
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from retinanet_trt.errors import UsageError
from retinanet_trt.export import DEFAULT_OPSET
from retinanet_trt.export.fold import fold_frozen_norms
from retinanet_trt.export.naming import tag_node_names
from retinanet_trt.export.parity import compare_outputs, worst
from retinanet_trt.export.pool_fix import fix_ceil_mode_pools
from retinanet_trt.fileio import check_writable, write_bytes_atomic
from retinanet_trt.model.retinanet import RetinaNet, output_names
from retinanet_trt.runtime.backends.ort_backend import cpu_session
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.metadata import set_metadata
from retinanet_trt.versions import package_versions

PARITY_MAX_REL = 1e-4  # the acceptance bound on every output's max_rel against PyTorch


@dataclass
class ExportOptions:
    input_hw: tuple[int, int]
    batch: int = 1
    dynamic: bool = False
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    parity_seed: int = 0
    parity_tolerance: float = PARITY_MAX_REL
    info: dict[str, Any] = field(default_factory=dict)  # extra metadata (source checkpoint, ...)


def check_input_size(spec: ModelSpec, input_hw: tuple[int, int]) -> None:
    """Raise a UsageError if H, W cannot go through the network without padding."""
    h, w = input_hw
    if h <= 0 or w <= 0:
        raise UsageError(f"--input-size {h} {w}: both sides must be positive")
    stride = 32  # C5's stride; P6/P7 are strided convs and take any size
    if spec.fpn.upsample in ("scale2", "deconv") and spec.backbone.stem_pool == "caffe_ceil_p1":
        # The k3 s2 p1 ceil pool makes an even map odd (400 -> 201), so the sizes that halve differ.
        bad = [side for side in (h, w) if not _halves(side)]
        if bad:
            near = min((n for n in range(max(1, bad[0] - 64), bad[0] + 65) if _halves(n)), key=lambda n: abs(n - bad[0]))
            raise UsageError(f"--input-size {h} {w}: with the stem pool k3 s2 p1 ceil_mode, C3..C5 of a side of {bad[0]} "
                             f"do not halve exactly, as x2 upsampling needs; e.g. {near} works")
    elif spec.fpn.upsample in ("scale2", "deconv") and (h % stride or w % stride):
        # x2 upsampling of P5 and P4 only lines up with the laterals when C3..C5 halve exactly.
        ok = (max(stride, round(h / stride) * stride), max(stride, round(w / stride) * stride))
        raise UsageError(
            f"--input-size {h} {w} is not divisible by {stride} (the stride of C5); "
            f"use e.g. --input-size {ok[0]} {ok[1]} (the pre-process pads images to it)"
        )


def _halves(side: int) -> bool:
    """Whether C3, C4, C5 of one side halve exactly behind a 7x7/2 conv and a k3 s2 p1 ceil_mode pool."""
    n = (side - 1) // 2 + 1  # the stem conv
    n = math.ceil((n - 1) / 2) + 1  # the pool (its last window always starts inside the map)
    c3 = -(-n // 2)
    return c3 == 2 * -(-c3 // 2) and -(-c3 // 2) == 2 * -(-c3 // 4)


def parity_sizes(input_hw: tuple[int, int], spec: ModelSpec, dynamic: bool) -> list[tuple[int, int]]:
    """The export size, and for dynamic models two more (smaller and larger, not square)."""
    if not dynamic:
        return [input_hw]
    s = 32
    h, w = input_hw
    return [input_hw, (max(s, h - s), max(s, w - 2 * s)), (h + s, w + 2 * s)]


def _torch_export(model: torch.nn.Module, spec: ModelSpec, opts: ExportOptions) -> onnx.ModelProto:
    names = output_names(spec)
    dummy = torch.zeros(opts.batch, 3, *opts.input_hw)
    dynamic_axes = None
    if opts.dynamic:
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        for n in names:
            dynamic_axes[n] = {0: "batch", 2: f"{n[-2:]}_height", 3: f"{n[-2:]}_width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but keeps module scopes in node names, which
        # tag_node_names turns into level tags; the graph itself is the same.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), buffer, dynamo=False, opset_version=opts.opset, input_names=["images"],
            output_names=names, dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model")
    return simplified


def run_parity(
    reference: RetinaNet, model_bytes: bytes, spec: ModelSpec, sizes: list[tuple[int, int]], batch: int, seed: int
) -> list[dict[str, Any]]:
    """Run PyTorch (unfolded) and ONNX Runtime on the same random input at each size."""
    session = cpu_session(model_bytes)
    names = output_names(spec)
    results = []
    for i, (h, w) in enumerate(sizes):
        x = np.random.default_rng(seed + i).standard_normal((batch, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = dict(zip(names, (t.numpy() for t in reference(torch.from_numpy(x)))))
        got = dict(zip(names, session.run(names, {"images": x})))
        results.append({"input_hw": [h, w], "outputs": compare_outputs(ref, got)})
    return results


def export_onnx(model: RetinaNet, spec: ModelSpec, out_path: str | Path, opts: ExportOptions) -> dict[str, Any]:
    """Export `model` to `out_path` and return the report (parity per output, op counts, fixes,
    time per step). The file is written only once every check has passed."""
    check_input_size(spec, opts.input_hw)
    if opts.batch < 1:
        raise UsageError(f"--batch {opts.batch}: must be at least 1")
    check_writable(out_path)
    model = model.eval()
    times: dict[str, float] = {}
    fixes: dict[str, Any] = {}

    t0 = time.perf_counter()
    folded, n_folded = fold_frozen_norms(model)
    fixes["folded_norms"] = n_folded
    times["fold_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    onnx_model = _torch_export(folded, spec, opts)
    times["export_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    onnx_model, pools = fix_ceil_mode_pools(onnx_model)
    fixes["ceil_mode_pools_rewritten"] = pools
    if opts.simplify:
        onnx_model = _simplify(onnx_model)
    fixes["simplified"] = opts.simplify
    times["simplify_s"] = time.perf_counter() - t0

    groups = tag_node_names(onnx_model)
    set_metadata(onnx_model, spec, {"dynamic": opts.dynamic, "batch": opts.batch, "input_hw": list(opts.input_hw),
                                    "precision": "fp32", "fixes": fixes, **opts.info})
    onnx.checker.check_model(onnx_model)
    model_bytes = onnx_model.SerializeToString()

    t0 = time.perf_counter()
    parity = run_parity(model, model_bytes, spec, parity_sizes(opts.input_hw, spec, opts.dynamic), opts.batch, opts.parity_seed)
    times["parity_s"] = time.perf_counter() - t0

    op_counts = Counter(n.op_type for n in onnx_model.graph.node)
    worst_name, worst_rel = max((worst(r["outputs"]) for r in parity), key=lambda t: t[1])
    report: dict[str, Any] = {
        "output": str(out_path),
        "spec_name": spec.name,
        "input_hw": list(opts.input_hw),
        "batch": opts.batch,
        "dynamic": opts.dynamic,
        "opset": opts.opset,
        "parity": parity,
        "worst_max_rel": worst_rel,
        "worst_output": worst_name,
        "parity_tolerance": opts.parity_tolerance,
        "passed": worst_rel <= opts.parity_tolerance,
        "op_counts": dict(sorted(op_counts.items())),
        "node_groups": groups,
        "checks": {
            "batch_normalization_nodes": op_counts.get("BatchNormalization", 0),
            "ceil_mode_pools": sum(
                1 for n in onnx_model.graph.node
                if n.op_type in ("MaxPool", "AveragePool") and any(a.name == "ceil_mode" and a.i for a in n.attribute)
            ),
        },
        "fixes": fixes,
        "times_s": {k: round(v, 3) for k, v in times.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": package_versions(),
    }
    if not report["passed"]:
        raise ParityError(report)
    write_bytes_atomic(out_path, model_bytes)
    return report


class ParityError(Exception):
    """ONNX Runtime disagrees with PyTorch beyond the tolerance; the report says where."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(
            f"parity check failed: {report['worst_output']} max_rel {report['worst_max_rel']:.3g} > "
            f"{report['parity_tolerance']:.3g}; no file written"
        )
        self.report = report
