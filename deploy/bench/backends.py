"""Options of a run and the Detector each backend gets."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from retinanet_trt.errors import UsageError, require_torch
from retinanet_trt.runtime.detector import BACKENDS, Detector

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


def check_device_options(backends: Sequence[str], opts: BenchOptions) -> None:
    """--device needs a GPU backend and --cuda-graph the TensorRT one: say so rather than ignore them."""
    if opts.batch < 1 or opts.batch > 256:
        raise UsageError(f"--batch {opts.batch}: give 1..256 images per inference")
    gpu = [b for b in backends if b in ("trt", "ort-cuda", "ort-trt")]
    if opts.device is not None and (opts.device < 0 or not gpu):
        raise UsageError(f"--device {opts.device} picks a GPU (index >= 0) for trt, ort-cuda or ort-trt; "
                         f"{', '.join(backends)} run on the CPU")
    if opts.cuda_graph and "trt" not in backends:
        raise UsageError("--cuda-graph replays CUDA graphs of a TensorRT engine; add --backend trt")


