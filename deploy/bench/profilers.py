"""Per-FPN-level profilers: ORT profiling JSON, PyTorch hooks, TensorRT's IProfiler rows."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retinanet_trt.export.naming import node_group
from retinanet_trt.runtime.backends.ort_backend import ort_session
from retinanet_trt.runtime.detector import Detector


def ort_node_groups(original: Any, optimized: Any | None) -> Callable[[str], str]:
    """A function from ORT's runtime node names to groups (backbone, fpn, p3.., other, mixed).

    original: our exported onnx.ModelProto (tagged node names); optimized: the graph ORT ran (saved
    with optimized_model_filepath) or None. ORT names nodes it creates after an original output
    tensor plus a suffix ('/backbone/stem/Relu_output_0_nchwc') or with a counter
    ('ReorderOutput_token_7'); the first are found through the tensor's producer, the others
    through the graph: the original tensors they write, or else the groups of their inputs.
    """
    tensor_group: dict[str, str] = {}
    name_group: dict[str, str] = {}
    for node in original.graph.node:
        group = node_group(node.name)
        name_group[node.name] = group
        for out in node.output:
            tensor_group[out] = group

    def by_name(name: str) -> str | None:
        if name in name_group:
            return name_group[name]
        stem = name
        for _ in range(2):  # ORT appends at most a suffix or two ('_nchwc', '_token_3')
            if stem in tensor_group:
                return tensor_group[stem]
            if "_" not in stem:
                break
            stem = stem.rsplit("_", 1)[0]
        return tensor_group.get(stem)

    resolved: dict[str, str] = {}
    if optimized is not None:
        made_by: dict[str, str] = {}  # tensor -> group of the optimized node that writes it
        for node in optimized.graph.node:
            group = by_name(node.name) or next((tensor_group[o] for o in node.output if o in tensor_group), None)
            if group is None:
                inputs = {made_by[i] for i in node.input if i in made_by}
                group = inputs.pop() if len(inputs) == 1 else ("mixed" if inputs else "other")
            resolved[node.name] = group
            for out in node.output:
                made_by[out] = group

    return lambda name: resolved.get(name) or by_name(name) or "other"


def ort_profile_runs(events: list[dict[str, Any]]) -> list[dict[str, float]]:
    """ORT profiling events -> one {node name: ms} per model run, in run order (Node kernel events only)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in runs]
    starts = [r[0] for r in runs]
    suffix = "_kernel_time"
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith(suffix):
            continue
        i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if i >= 0 and e["ts"] <= runs[i][1]:
            per_run[i][e["name"][: -len(suffix)]] += e["dur"] / 1e3  # dur is in microseconds
    return [dict(r) for r in per_run]


@dataclasses.dataclass
class LevelProfile:
    """Per-run group times (ms) of the kept profiled runs, and how they were measured."""

    runs: list[dict[str, float]]
    method: str
    profiled_run_ms: list[float] = dataclasses.field(default_factory=list)  # whole profiled runs


class LevelProfiler(Protocol):
    """Runs profiled inferences; `interleaved` ones can alternate with timed runs without disturbing them."""

    interleaved: bool

    def run(self, images: np.ndarray, keep: bool) -> None: ...

    def finish(self) -> LevelProfile: ...


class OrtLevelProfiler:
    """A second ORT session of the same model and options, with profiling on."""

    interleaved = True

    def __init__(self, onnx_path: str, backend: str, threads: int) -> None:
        import onnx
        import onnxruntime as ort

        from retinanet_trt.runtime.backends.ort_backend import PROVIDERS

        self._tmp = tempfile.TemporaryDirectory(prefix="trt-bench-")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(self._tmp.name) / "ort_profile")
        options.log_severity_level = 3  # ORT warns that an NCHWc-optimized graph is machine-specific: we know
        optimized = Path(self._tmp.name) / "optimized.onnx"
        options.optimized_model_filepath = str(optimized)
        # Weights go to a side file: only the graph is read back, and R50's 150 MB need not be parsed.
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        provider = PROVIDERS[backend]
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        self.session = ort_session(onnx_path, options, providers, onnx_path)
        self._input = self.session.get_inputs()[0].name
        original = onnx.load(onnx_path, load_external_data=False)
        # Execution providers that compile subgraphs (TensorRT EP) cannot save the optimized graph.
        graph = onnx.load(str(optimized), load_external_data=False) if optimized.is_file() else None
        self._group = ort_node_groups(original, graph)
        self._keep: list[bool] = []

    def run(self, images: np.ndarray, keep: bool) -> None:
        self.session.run(None, {self._input: images})
        self._keep.append(keep)

    def finish(self) -> LevelProfile:
        with open(self.session.end_profiling()) as fh:
            events = json.load(fh)
        self._tmp.cleanup()
        runs = ort_profile_runs(events)
        whole = sorted((e["ts"], e["dur"] / 1e3) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        kept, kept_ms = [], []
        for nodes, (_, ms), keep in zip(runs, whole, self._keep, strict=True):
            if keep:
                groups: dict[str, float] = defaultdict(float)
                for name, t in nodes.items():
                    groups[self._group(name)] += t
                kept.append(dict(groups))
                kept_ms.append(ms)
        return LevelProfile(kept, "onnxruntime profiling JSON: Node kernel times summed per group per run "
                            "(a second session, same options)", kept_ms)


class TorchLevelProfiler:
    """Forward hooks on backbone, FPN and the shared head (one head call per level, in level order)."""

    interleaved = True

    def __init__(self, detector: Detector) -> None:
        self.backend: Any = detector.backend
        self.levels = list(detector.spec.levels)
        self.runs: list[dict[str, float]] = []
        self.whole: list[float] = []

    def run(self, images: np.ndarray, keep: bool) -> None:
        import torch

        model = self.backend.model
        cuda = self.backend.device.type == "cuda"
        calls: list[tuple[str, float]] = []
        started: dict[str, float] = {}

        def before(part: str) -> Callable[..., None]:
            def hook(*_: Any) -> None:
                if cuda:
                    torch.cuda.synchronize()
                started[part] = time.perf_counter()
            return hook

        def after(part: str) -> Callable[..., None]:
            def hook(*_: Any) -> None:
                if cuda:
                    torch.cuda.synchronize()
                calls.append((part, (time.perf_counter() - started[part]) * 1e3))
            return hook

        handles = []
        for part in ("backbone", "fpn", "head"):
            module = getattr(model, part)
            handles += [module.register_forward_pre_hook(before(part)), module.register_forward_hook(after(part))]
        try:
            self.backend.run(images)
        finally:
            for h in handles:
                h.remove()
        if not keep:
            return
        heads = iter(f"p{lv}" for lv in self.levels)
        groups = {(next(heads) if part == "head" else part): ms for part, ms in calls}
        compute = self.backend.last_times.compute_ms
        groups["other"] = max(0.0, compute - sum(groups.values()))  # forward outside the three parts
        self.runs.append(groups)
        self.whole.append(compute)

    def finish(self) -> LevelProfile:
        return LevelProfile(self.runs, "PyTorch forward hooks on backbone / fpn / head (head per level call); "
                            "'other' = rest of the forward", self.whole)


class TrtLevelProfiler:
    """TensorRT's IProfiler rows by layer name. Attaching it makes every later execution report per
    layer, so its runs come after the timed loop."""

    interleaved = False

    def __init__(self, detector: Detector, attach: Callable[[], Any]) -> None:
        self._attach = attach
        self.backend: Any = detector.backend
        self._times: Any = None
        self._keep: list[bool] = []
        self.whole: list[float] = []

    def run(self, images: np.ndarray, keep: bool) -> None:
        if self._times is None:
            self._times = self._attach()
        self.backend.run(images)
        self._keep.append(keep)
        if keep:
            self.whole.append(self.backend.last_times.compute_ms)

    def finish(self) -> LevelProfile:
        layers: dict[str, list[float]] = self._times.ms if self._times is not None else {}
        runs = []
        for i, keep in enumerate(self._keep):
            if keep:
                groups: dict[str, float] = defaultdict(float)
                for name, per_run in layers.items():
                    if i < len(per_run):
                        groups[node_group(name)] += per_run[i]
                runs.append(dict(groups))
        return LevelProfile(runs, "TensorRT IProfiler per layer, by layer name ('mixed': fused across groups)",
                            self.whole)


def trt_profiler_hook(detector: Detector) -> Callable[[], Any] | None:
    """The TensorRT backend's attach_profiler (on it or on its engine), returning trt_engine.LayerTimes."""
    backend: Any = detector.backend
    return getattr(backend, "attach_profiler", None) or getattr(getattr(backend, "engine", None), "attach_profiler", None)


def make_level_profiler(model: str, backend: str, detector: Detector, threads: int) -> LevelProfiler | None:
    """The per-level profiler for a backend; None where the backend offers no way to profile."""
    if backend == "torch":
        return TorchLevelProfiler(detector)
    if backend == "trt":
        hook = trt_profiler_hook(detector)
        return TrtLevelProfiler(detector, hook) if hook else None
    return OrtLevelProfiler(model, backend, threads)


