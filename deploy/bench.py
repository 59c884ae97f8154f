"""Latency of the detector end to end, by part and by FPN level, for several backends in one run.

    report = run_bench("m.onnx", ["torch", "ort-cpu"], BenchOptions(input_hw=(480, 640)))
    print(format_report(report)); plot_report(report, "bench.png")

Protocol (DESIGN.md): the same images, machine and run for every backend; warm-up, then timed
iterations taken round-robin over the backends (so machine load drifts hit them alike); median,
p90 and p99 per part; ratios to the first backend.

Parts: pre-process (resize + normalise + pad; images are decoded beforehand), H2D, compute, D2H
and post-process, as the Detector reports them, plus the wall time of the whole.

Per FPN level: profiled runs, separate from the timed ones, split compute into backbone, FPN and
each level's head. ONNX Runtime: a second session with profiling on, whose Node events (kernel
time per node) are attributed by `node_group`; ORT renames nodes it rewrites, so names are mapped
back through the optimized graph ORT saves (see ort_node_groups). PyTorch: forward hooks on the
backbone, the FPN and the shared head (called once per level, in level order). TensorRT: the
engine's IProfiler rows by layer name, fused layers that span parts counted as 'mixed'.
Each part's figure is its mean over the profiled runs whose total is in the interquartile range
(see central_mean), as measured, not scaled: their sum is checked
against the median compute time of the un-profiled runs, which shows the profiler's overhead and
the time outside nodes honestly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retinanet_trt.errors import UsageError, require_torch
from retinanet_trt.export.naming import node_group
from retinanet_trt.runtime.detector import BACKENDS, Detector
from retinanet_trt.runtime.images import LoadedImage, find_images, load_image
from retinanet_trt.runtime.preprocess import padded_side, preprocess
from retinanet_trt.spec import ModelSpec
from retinanet_trt.versions import environment

STAGES = ("preprocess", "h2d", "compute", "d2h", "postprocess", "end_to_end")
PER_LEVEL_TOLERANCE = 0.10  # per-level sum vs un-profiled compute: DESIGN's acceptance bound
MAX_SIDE = 8192  # larger inputs are a typo, and would exhaust memory before saying so
PROTOCOL_MIN_ITERATIONS = 20


@dataclasses.dataclass
class BenchOptions:
    """What to run: input size (None: the model's static size or the spec's default), counts, threads."""

    input_hw: tuple[int, int] | None = None
    warmup: int = 3
    iterations: int = 20
    profile_runs: int | None = None  # profiled runs for the per-level split; None: as many as iterations
    threads: int = 0  # intra-op threads for ORT and PyTorch; 0: each library's default
    images: Sequence[str | os.PathLike[str]] | None = None  # files or folders; None: a synthetic photo
    torch_checkpoint: str | None = None  # weights for the torch backend when MODEL is an ONNX file


# ---------------------------------------------------------------------------------------- statistics
def summarize(samples: Sequence[float]) -> dict[str, float]:
    """median, p90, p99, mean, min and count of millisecond samples."""
    a = np.asarray(samples, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "n": int(a.size),
    }


def _median_by_key(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per key, the median over rows (a key missing from a row counts as 0 there)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: float(statistics.median(row.get(k, 0.0) for row in rows)) for k in keys}


def central_mean(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per key, the mean over the runs whose total lies within the interquartile range of totals.

    Means add up (the parts sum to the mean total of those runs), unlike per-part medians, which
    under preemption spikes in different parts on different runs sum to less than a typical run;
    keeping the middle half of runs drops those spikes as a median would.
    """
    totals = np.array([sum(r.values()) for r in runs])
    lo, hi = np.percentile(totals, [25, 75])
    kept = [r for r, t in zip(runs, totals, strict=True) if lo <= t <= hi] or list(runs)
    keys = list(dict.fromkeys(k for row in kept for k in row))
    return {k: float(np.mean([row.get(k, 0.0) for row in kept])) for k in keys}


def group_order(levels: Sequence[int], present: Sequence[str] = ()) -> list[str]:
    """backbone, fpn, p3..pL, other, then 'post' (in-graph post-process of end-to-end models) and
    'mixed' (a fused layer spanning groups), each only when present."""
    order = ["backbone", "fpn", *(f"p{lv}" for lv in levels), "other"]
    return order + [g for g in ("post", "mixed") if g in present]


# ---------------------------------------------------------------------------------------- inputs
def synthetic_image(input_hw: tuple[int, int]) -> LoadedImage:
    """scikit-image's `astronaut` photo resized to H x W: real-photo statistics, no file, no network."""
    from PIL import Image
    from skimage import data

    h, w = input_hw
    pixels = np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.BILINEAR))
    return LoadedImage(pixels, f"skimage astronaut {h}x{w}")


def bench_images(paths: Sequence[str | os.PathLike[str]] | None, input_hw: tuple[int, int]) -> list[LoadedImage]:
    """Decoded images for the timed loop (decoding is not part of the measured pre-process)."""
    if paths is None:
        return [synthetic_image(input_hw)]
    found = find_images(paths)
    if not found:
        raise UsageError(f"no images found in {', '.join(map(str, paths))}; give a folder with .jpg/.png files")
    return [load_image(p) for p in found]


def bench_spec(spec: ModelSpec, input_hw: tuple[int, int]) -> ModelSpec:
    """The spec with its resize set to the input size, so every image and backend runs one network
    shape; channel order, scale, mean/std and rounding stay the model's own."""
    pre = dataclasses.replace(spec.preprocess, resize="fixed", fixed_size=list(input_hw))
    return dataclasses.replace(spec, preprocess=pre)


def onnx_fixed_hw(path: str) -> tuple[int, int] | None:
    """(H, W) of an ONNX file's input when both are fixed numbers, else None."""
    import onnx

    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
        return int(dims[2].dim_value), int(dims[3].dim_value)
    return None


def resolve_input_hw(model: str, detectors: dict[str, Detector], requested: tuple[int, int] | None) -> tuple[int, int]:
    """The one network input size for all backends; UsageError for sizes the models cannot take."""
    fixed = {name: d.fixed_input_hw for name, d in detectors.items() if d.fixed_input_hw is not None}
    model_hw = onnx_fixed_hw(model) if model.endswith(".onnx") else None
    if model_hw is not None:  # also binds the torch backend, which rebuilds the ONNX file's model
        fixed.setdefault("ONNX", model_hw)
    if len(set(fixed.values())) > 1:
        sizes = ", ".join(f"{n} {hw[0]}x{hw[1]}" for n, hw in fixed.items())
        raise UsageError(f"the backends' models have different fixed input sizes ({sizes}); compare models of one size")
    spec = next(iter(detectors.values())).spec
    if requested is None:
        if fixed:
            return next(iter(fixed.values()))
        from retinanet_trt.cli.export import default_input_hw

        return default_input_hw(spec)
    h, w = requested
    if h <= 0 or w <= 0 or h > MAX_SIDE or w > MAX_SIDE:
        raise UsageError(f"--input-size {h} {w}: each side must be between 1 and {MAX_SIDE}")
    for name, hw in fixed.items():
        if hw != (h, w):
            raise UsageError(f"--input-size {h} {w} does not match the fixed input {hw[0]}x{hw[1]} of the {name} "
                             f"model; drop --input-size or re-export with --input-size {h} {w} (or --dynamic)")
    from retinanet_trt.export.pipeline import check_input_size

    check_input_size(spec, (h, w))
    pre = spec.preprocess
    if (padded_side(h, pre), padded_side(w, pre)) != (h, w):
        raise UsageError(f"--input-size {h} {w}: the pre-process pads to multiples of {pre.size_divisibility}; "
                         "give sides that are multiples of it")
    return h, w


# ---------------------------------------------------------------------------------------- backends
def _torch_for_onnx(onnx_path: str, checkpoint: str | None) -> Detector:
    """The torch backend for an ONNX model: from --torch-checkpoint, the bundled demo, or the seed of a
    --random-init export (build_model(spec, seed) gives the same weights deterministically)."""
    from retinanet_trt.export.metadata import read_info, read_spec
    from retinanet_trt.model import build_model
    from retinanet_trt.model.torch_backend import TorchBackend

    if checkpoint:
        return Detector.load(checkpoint, "torch")
    info = read_info(onnx_path)
    if info.get("checkpoint") == "bundled demo":
        return Detector.load("demo", "torch")
    if "random_init_seed" in info:
        spec = read_spec(onnx_path)
        return Detector(TorchBackend(build_model(spec, seed=int(info["random_init_seed"])), spec))
    raise UsageError(f"the torch backend needs the weights of {onnx_path}: add --torch-checkpoint CHECKPOINT")


def load_detector(model: str, backend: str, opts: BenchOptions) -> Detector:
    """One backend's Detector; UsageError (one line) when the backend is unknown or unusable here."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if model != "demo" and not Path(model).exists():
        raise UsageError(f"model {model} not found; give an .onnx, an .engine, a checkpoint or 'demo'")
    if backend == "trt":
        from retinanet_trt import trt_engine

        ok, why = trt_engine.available()
        if not ok:
            raise UsageError(f"backend trt is unavailable here: {why}")
    if backend == "torch":
        require_torch("the torch backend (--backend/--compare torch)")
        if opts.threads:
            import torch

            torch.set_num_threads(opts.threads)
        if model.endswith(".onnx"):
            return _torch_for_onnx(model, opts.torch_checkpoint)
        return Detector.load(model, "torch")
    if backend.startswith("ort-"):
        return Detector.load(model, backend, threads=opts.threads)
    return Detector.load(model, backend)


# ---------------------------------------------------------------------------------------- ORT profiles
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


# ---------------------------------------------------------------------------------------- level profilers
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
        self.session = ort.InferenceSession(onnx_path, options, providers=providers)
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


def make_level_profiler(model: str, backend: str, detector: Detector, opts: BenchOptions) -> LevelProfiler | None:
    """The per-level profiler for a backend; None where the backend offers no way to profile."""
    if backend == "torch":
        return TorchLevelProfiler(detector)
    if backend == "trt":
        hook = trt_profiler_hook(detector)
        return TrtLevelProfiler(detector, hook) if hook else None
    return OrtLevelProfiler(model, backend, opts.threads)


# ---------------------------------------------------------------------------------------- the run
@dataclasses.dataclass
class _Item:
    name: str
    detector: Detector
    spec: ModelSpec  # with the bench resize
    profiler: LevelProfiler | None
    samples: list[dict[str, float]] = dataclasses.field(default_factory=list)
    post_levels: list[dict[str, float]] = dataclasses.field(default_factory=list)
    profiled: int = 0


def _iteration(item: _Item, image: LoadedImage, input_hw: tuple[int, int], keep: bool) -> np.ndarray:
    """One end-to-end inference, timed by part; returns the network input for a profiled run."""
    t0 = time.perf_counter()
    batch = preprocess([image], item.spec, input_hw=input_hw)
    t1 = time.perf_counter()
    item.detector.detect_batch(batch)
    t2 = time.perf_counter()
    if keep:
        times = item.detector.last_times_ms
        item.samples.append({
            "preprocess": (t1 - t0) * 1e3, "h2d": times["h2d"], "compute": times["compute"], "d2h": times["d2h"],
            "postprocess": times["postprocess"], "end_to_end": (t2 - t0) * 1e3,
        })
        item.post_levels.append(dict(times["postprocess_levels"]))
    return batch.images


def _max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float | None:
    common = [k for k in a if k in b and a[k].shape == b[k].shape]
    return max((float(np.max(np.abs(a[k] - b[k]))) for k in common), default=None)


def run_bench(model: str, backends: Sequence[str], opts: BenchOptions,
              log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Benchmark `backends` on `model` side by side; returns the JSON-ready report."""
    backends = ["ort-cpu" if b == "onnxruntime" else b for b in backends]  # the alias trt-infer accepts
    if not backends:
        raise UsageError("no backend given")
    if len(set(backends)) != len(backends):
        raise UsageError(f"--compare lists a backend twice: {','.join(backends)}")
    if opts.iterations < 1 or opts.warmup < 0 or (opts.profile_runs or 0) < 0:
        raise UsageError("--iterations must be >= 1, --warmup and --profile-runs >= 0")
    detectors = {b: load_detector(model, b, opts) for b in backends}
    input_hw = resolve_input_hw(model, detectors, opts.input_hw)
    images = bench_images(opts.images, input_hw)
    profile_runs = opts.iterations if opts.profile_runs is None else opts.profile_runs
    items = [
        _Item(b, d, bench_spec(d.spec, input_hw), make_level_profiler(model, b, d, opts) if profile_runs else None)
        for b, d in detectors.items()
    ]

    # The same input through every backend once: raw outputs should agree (same weights, same work).
    first_batch = preprocess([images[0]], items[0].spec, input_hw=input_hw)
    reference = items[0].detector.backend.run(first_batch.images)
    diffs = {it.name: _max_abs_diff(reference, it.detector.backend.run(first_batch.images)) for it in items[1:]}

    log(f"warm-up: {opts.warmup} iteration(s) per backend")
    for i in range(opts.warmup):
        for it in items:
            x = _iteration(it, images[i % len(images)], input_hw, keep=False)
            if it.profiler is not None and it.profiler.interleaved:
                it.profiler.run(x, keep=False)
    log(f"timing: {opts.iterations} iteration(s) per backend, round-robin over {', '.join(backends)}")
    for i in range(opts.iterations):
        for it in items:
            x = _iteration(it, images[i % len(images)], input_hw, keep=True)
            if it.profiler is not None and it.profiler.interleaved and it.profiled < profile_runs:
                it.profiler.run(x, keep=True)
                it.profiled += 1
    for it in items:
        if it.profiler is None:
            continue
        x = preprocess([images[0]], it.spec, input_hw=input_hw).images
        if not it.profiler.interleaved:
            for _ in range(opts.warmup):
                it.profiler.run(x, keep=False)
        while it.profiled < profile_runs:
            it.profiler.run(x, keep=True)
            it.profiled += 1

    results = {it.name: _backend_result(it, diffs.get(it.name)) for it in items}
    _add_ratios(results, list(backends))
    if _model_info(model).get("precision") == "int8":
        _label_int8_arithmetic(items, results)
    for it in items:
        it.detector.close()
    return {
        "tool": "trt-bench",
        "model": str(model),
        "model_name": items[0].detector.spec.name,
        "model_info": _model_info(model),
        "levels": list(items[0].detector.spec.levels),
        "backends": list(backends),
        "protocol": {
            "warmup": opts.warmup, "iterations": opts.iterations, "profile_runs": profile_runs,
            "input_hw": list(input_hw), "batch": 1, "threads": opts.threads or "library default",
            "images": images[0].source if opts.images is None else f"{len(images)} image(s) from {', '.join(map(str, opts.images))}",
            "order": "warm-up, then timed iterations round-robin over the backends; ORT and torch profiled runs "
                     "interleaved with the timed ones, TensorRT's after them",
            "preprocess": "resize to the input size + normalise + pad (images decoded beforehand)",
            "statistics": "median, p90, p99 over timed iterations; throughput = images / sum of end-to-end times",
        },
        "versions": environment(),
        "results": results,
    }


def _model_info(model: str) -> dict[str, Any]:
    """What trt-export recorded in an ONNX file (seed, precision, input size); {} for other models."""
    if not model.endswith(".onnx"):
        return {}
    from retinanet_trt.export.metadata import read_info

    return read_info(model)


def _backend_result(item: _Item, diff: float | None) -> dict[str, Any]:
    stages = {s: summarize([row[s] for row in item.samples]) for s in STAGES}
    post_levels = _median_by_key(item.post_levels)
    out: dict[str, Any] = {
        "stages_ms": stages,
        "compute_ms": stages["compute"]["median"],
        "end_to_end_ms": stages["end_to_end"]["median"],
        "throughput_ips": len(item.samples) / (sum(r["end_to_end"] for r in item.samples) / 1e3),
        "postprocess_ms": {"total": stages["postprocess"]["median"], **post_levels},
    }
    if diff is not None:
        out["max_abs_diff_vs_first"] = diff
    if item.profiler is None:
        out["per_level_ms"] = None
        out["per_level_note"] = "not profiled (--profile-runs 0, or the backend exposes no per-layer profiler)"
        return out
    profile = item.profiler.finish()
    if not profile.runs:
        out["per_level_ms"] = None
        out["per_level_note"] = "the profiler reported no runs"
        return out
    means = central_mean(profile.runs)
    order = group_order(item.detector.spec.levels, list(means))
    per_level = {g: means.get(g, 0.0) for g in order}
    per_level.update({g: ms for g, ms in means.items() if g not in per_level})  # unexpected groups stay visible
    total = sum(per_level.values())
    compute = out["compute_ms"]
    out["per_level_ms"] = per_level
    out["per_level_check"] = {
        "sum_ms": total,
        "compute_ms": compute,
        "sum_over_compute": total / compute if compute else None,
        "within_tolerance": bool(compute) and abs(total / compute - 1.0) <= PER_LEVEL_TOLERANCE,
        "tolerance": PER_LEVEL_TOLERANCE,
        "profiled_runs": len(profile.runs),
        "profiled_run_ms": float(np.median(profile.profiled_run_ms)) if profile.profiled_run_ms else None,
        "method": profile.method + "; per part: mean over the profiled runs with an interquartile total; not scaled",
    }
    return out


def _label_int8_arithmetic(items: Sequence[_Item], results: dict[str, dict[str, Any]]) -> None:
    """ORT CPU runs a Q/DQ file through fused integer kernels whose results depend on the CPU:
    its figure is a speed figure; accuracy is trt-calib's, in simulated Q/DQ."""
    from retinanet_trt.runtime.backends.ort_backend import ARITHMETIC_LABELS

    for it in items:
        arithmetic = getattr(it.detector.backend, "arithmetic", None)
        if it.name == "ort-cpu" and arithmetic in ARITHMETIC_LABELS:
            results[it.name]["arithmetic"] = ARITHMETIC_LABELS[arithmetic]


def _add_ratios(results: dict[str, dict[str, Any]], order: list[str]) -> None:
    """time ratio (this / first; < 1 is faster) and speed-up (first / this) for end-to-end and compute."""
    first = results[order[0]]
    for name in order[1:]:
        r = results[name]
        r["ratio_vs_first"] = {
            key: {"time_ratio": r[f"{key}_ms"] / first[f"{key}_ms"], "speedup": first[f"{key}_ms"] / r[f"{key}_ms"]}
            for key in ("end_to_end", "compute")
        }


# ---------------------------------------------------------------------------------------- output
def format_report(report: dict[str, Any]) -> str:
    """Tables for people: parts (median / p90 / p99), per FPN level, post-process per level, ratios."""
    from retinanet_trt.cli.common import format_table

    names = report["backends"]
    res = report["results"]
    proto = report["protocol"]
    h, w = proto["input_hw"]
    lines = [f"{report['model_name']} ({report['model']}) at {h}x{w}, {proto['iterations']} iterations after "
             f"{proto['warmup']} warm-up, threads: {proto['threads']}, input: {proto['images']}"]
    lines += [f"{n}: {res[n]['arithmetic']}" for n in names if "arithmetic" in res[n]]
    lines.append("")

    headers = ["part (ms)"] + [f"{n} {q}" for n in names for q in ("median", "p90", "p99")]
    rows = [[s] + [res[n]["stages_ms"][s][q] for n in names for q in ("median", "p90", "p99")] for s in STAGES]
    rows.append(["images/s"] + [v for n in names for v in (res[n]["throughput_ips"], "", "")])
    lines += [format_table(headers, rows), ""]

    profiled = [n for n in names if res[n].get("per_level_ms")]
    if profiled:
        groups = list(dict.fromkeys(g for n in profiled for g in res[n]["per_level_ms"]))
        headers = ["compute by part (ms)"] + [c for n in profiled for c in (n, "%")]
        rows = []
        for g in groups:
            row: list[Any] = [g]
            for n in profiled:
                ms = res[n]["per_level_ms"].get(g, 0.0)
                row += [ms, f"{100 * ms / res[n]['compute_ms']:.1f}"]
            rows.append(row)
        checks = {n: res[n]["per_level_check"] for n in profiled}
        rows.append(["sum of parts"] + [v for n in profiled for v in (checks[n]["sum_ms"], "")])
        rows.append(["compute (un-profiled median)"] + [v for n in profiled for v in (checks[n]["compute_ms"], "")])
        rows.append(["sum / compute"] + [v for n in profiled for v in (
            f"{checks[n]['sum_over_compute']:.3f}", "ok" if checks[n]["within_tolerance"] else "OFF >10%")])
        lines += [format_table(headers, rows), ""]

    keys = list(dict.fromkeys(k for n in names for k in res[n]["postprocess_ms"] if k != "total"))
    headers = ["post-process (ms)"] + names
    rows = [[k] + [res[n]["postprocess_ms"].get(k, 0.0) for n in names] for k in keys + ["total"]]
    lines += [format_table(headers, rows)]

    for n in names[1:]:
        r = res[n]["ratio_vs_first"]
        diff = res[n].get("max_abs_diff_vs_first")
        lines.append(f"{n} vs {names[0]}: end to end {r['end_to_end']['time_ratio']:.3f}x the time "
                     f"({r['end_to_end']['speedup']:.2f}x speed-up), compute {r['compute']['time_ratio']:.3f}x "
                     f"({r['compute']['speedup']:.2f}x)" + (f"; outputs max abs diff {diff:.3g}" if diff is not None else ""))
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """PNG bar chart: parts end to end, compute per FPN level, post-process per level; one bar per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retinanet_trt.fileio import atomic_path

    names = report["backends"]
    res = report["results"]
    panels: list[tuple[str, list[str], Callable[[str, str], float]]] = [
        ("end to end by part (median ms)", list(STAGES), lambda n, k: res[n]["stages_ms"][k]["median"]),
    ]
    profiled = [n for n in names if res[n].get("per_level_ms")]
    if profiled:
        groups = list(dict.fromkeys(g for n in profiled for g in res[n]["per_level_ms"]))
        panels.append(("compute by part / FPN level (ms, profiled)", groups,
                       lambda n, k: (res[n].get("per_level_ms") or {}).get(k, 0.0)))
    post_keys = list(dict.fromkeys(k for n in names for k in res[n]["postprocess_ms"] if k != "total"))
    panels.append(("post-process by level (median ms)", post_keys, lambda n, k: res[n]["postprocess_ms"].get(k, 0.0)))

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    width = 0.8 / len(names)
    for ax, (title, keys, value) in zip(axes[0], panels, strict=True):
        x = np.arange(len(keys))
        for i, n in enumerate(names):
            ax.bar(x + (i - (len(names) - 1) / 2) * width, [value(n, k) for k in keys], width, label=n)
        ax.set_xticks(x, keys, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("ms")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    h, w = report["protocol"]["input_hw"]
    fig.suptitle(f"trt-bench: {report['model_name']} {h}x{w}, {report['protocol']['iterations']} iterations")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
