"""Options of a run and the Detector each backend gets."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from retinanet_trt.errors import UsageError, require_torch
from retinanet_trt.runtime.detector import BACKENDS, Detector
from retinanet_trt.runtime.pipeline import machine_cores

PROTOCOL_MIN_ITERATIONS = 20
# Larger counts are typos: 100000 iterations of the smallest model already take hours.
MAX_ITERATIONS = 100_000
MAX_BATCH = 256
# Intra-op threads beyond a few per core only oversubscribe; 100000 makes ORT hang creating them.
THREADS_PER_CORE = 4
THREADS_FLOOR = 64  # the limit on a small machine: a benchmark script written on a big one still runs


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
    batch: int = 1  # images per inference (the same image set, cycled)
    device: int | None = None  # GPU index for trt / ort-cuda / ort-trt; None: device 0
    cuda_graph: bool = False  # trt: replay a CUDA graph captured per input shape


def _torch_for_onnx(onnx_path: str, checkpoint: str | None) -> Detector:
    """The torch backend for an ONNX model: from --torch-checkpoint, the bundled demo, or the seed of a
    --random-init export (build_model(spec, seed) gives the same weights deterministically)."""
    from retinanet_trt.model import build_model
    from retinanet_trt.model.torch_backend import TorchBackend
    from retinanet_trt.spec.metadata import read_info, read_spec

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
        from retinanet_trt.tensorrt import engine as trt_engine

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
    if backend == "ort-cpu":
        return Detector.load(model, backend, threads=opts.threads)
    if backend.startswith("ort-"):
        return Detector.load(model, backend, threads=opts.threads, device=opts.device or 0)
    return Detector.load(model, backend, device=opts.device or 0, cuda_graph=opts.cuda_graph)


def check_counts(iterations: int, warmup: int, profile_runs: int | None = None) -> None:
    """UsageError unless each count is in its range (profile_runs None: not given)."""
    for flag, value, low in (("--iterations", iterations, 1), ("--warmup", warmup, 0),
                             ("--profile-runs", profile_runs, 0)):
        if value is not None and not low <= value <= MAX_ITERATIONS:
            raise UsageError(f"{flag} must be >= {low} and <= {MAX_ITERATIONS} (got {value})")


def check_batch(batch: int) -> None:
    if not 1 <= batch <= MAX_BATCH:
        raise UsageError(f"--batch {batch}: give 1..{MAX_BATCH} images per inference")


def max_threads() -> int:
    return max(THREADS_FLOOR, THREADS_PER_CORE * machine_cores())


def check_options(model: str, backends: Sequence[str], opts: BenchOptions) -> list[str]:
    """The backends (the onnxruntime alias resolved) once every option is checked against them,
    before any model loads or anything is printed; UsageError (one line) otherwise."""
    backends = ["ort-cpu" if b == "onnxruntime" else b for b in backends]  # the alias trt-infer accepts
    if not backends:
        raise UsageError("no backend given")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    if len(set(backends)) != len(backends):
        raise UsageError(f"--compare lists a backend twice: {','.join(backends)}")
    check_counts(opts.iterations, opts.warmup, opts.profile_runs)
    if not 0 <= opts.threads <= max_threads():
        raise UsageError(f"--threads {opts.threads}: give 0 (library default) .. {max_threads()} "
                         f"(this machine has {machine_cores()} cores; more threads only oversubscribe them)")
    if opts.torch_checkpoint is not None:
        if "torch" not in backends:
            raise UsageError(f"--torch-checkpoint needs the torch backend, which this run does not use "
                             f"({', '.join(backends)}); add it (e.g. --compare torch,{backends[0]}) or drop the flag")
        if not model.endswith(".onnx"):
            raise UsageError(f"--torch-checkpoint gives weights to an ONNX MODEL's torch backend; {model} carries "
                             "its own, drop the flag")
    check_device_options(backends, opts)
    return backends


def check_device_options(backends: Sequence[str], opts: BenchOptions) -> None:
    """--device needs a GPU backend and --cuda-graph the TensorRT one: say so rather than ignore them."""
    check_batch(opts.batch)
    gpu = [b for b in backends if b in ("trt", "ort-cuda", "ort-trt")]
    if opts.device is not None and (opts.device < 0 or not gpu):
        raise UsageError(f"--device {opts.device} picks a GPU (index >= 0) for trt, ort-cuda or ort-trt; "
                         f"{', '.join(backends)} run on the CPU")
    if opts.cuda_graph and "trt" not in backends:
        raise UsageError("--cuda-graph replays CUDA graphs of a TensorRT engine; add --backend trt")


