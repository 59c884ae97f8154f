"""trt-bench: latency end to end, by part and by FPN level, for one backend or several side by side."""

from __future__ import annotations

import sys

from retinanet_trt.cli.common import make_parser, run_main
from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import check_outputs, write_json_atomic
from retinanet_trt.runtime.detector import BACKENDS, default_backend

EXAMPLES = """\
  trt-bench m.onnx --backend ort-cpu --warmup 2 --iterations 20 --json bench.json --plot bench.png
  trt-bench m.onnx --compare torch,ort-cpu --threads 2          # torch weights from the --random-init seed
  trt-bench m.onnx --compare torch,ort-cpu --torch-checkpoint model_final.pth --images photos/
  trt-bench model.fp16.engine --backend trt --iterations 200
  trt-bench m.onnx --simulate-device 2 5 10 --images photos/ --json pipeline.json   # SIMULATED GPU: host pipeline
"""


def build_parser():  # type: ignore[no-untyped-def]
    p = make_parser("trt-bench", "Measure pre-process, H2D, compute, D2H and post-process (median, p90, p99, "
                    "images/s), and compute per FPN level from profiled runs; several backends in one run.", EXAMPLES)
    p.add_argument("model", help="an .onnx file, a TensorRT .engine, a checkpoint, or 'demo'")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--backend", help=f"one of {', '.join(BACKENDS)} (default: from the model file type)")
    which.add_argument("--compare", help="comma-separated backends run side by side, ratios to the first")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="network input size (default: the model's fixed size, else the spec's)")
    p.add_argument("--images", nargs="+", metavar="DIR", help="image files or folders (default: a synthetic photo)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3, at most 100000)")
    p.add_argument("--iterations", type=int, default=20, help="timed iterations (default 20, at most 100000)")
    p.add_argument("--profile-runs", type=int, help="profiled runs for the per-level split (default: --iterations; 0: none)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for ORT and PyTorch (0: their default; "
                   "at most 4 per core, or 64 on a small machine)")
    p.add_argument("--torch-checkpoint", help="weights for the torch backend when MODEL is an ONNX file")
    p.add_argument("--batch", type=int, default=1, help="images per inference (default 1)")
    p.add_argument("--device", type=int, help="GPU index for trt, ort-cuda and ort-trt (default 0)")
    p.add_argument("--cuda-graph", action="store_true", help="trt: replay a CUDA graph per input shape")
    p.add_argument("--simulate-device", type=float, nargs="+", metavar="MS",
                   help="time trt-infer's host pipeline (overlap off and on) against a SIMULATED device taking MS ms "
                        "per batch (0 < MS <= 10000) and returning outputs recorded from one real run (a fixed-size "
                        "model; host timing only, never accuracy); --iterations: passes per configuration")
    p.add_argument("--workers", type=int, help="with --simulate-device: host threads with overlap on (default: one per core)")
    p.add_argument("--uint8-model", help="with --simulate-device: the same model exported with --input-format uint8, "
                   "measured beside it")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--plot", help="write a PNG bar chart here")
    return p


def _main(argv: list[str] | None) -> int:
    from retinanet_trt.bench import PROTOCOL_MIN_ITERATIONS, BenchOptions, format_report, plot_report, run_bench
    from retinanet_trt.bench.backends import check_options

    args = build_parser().parse_args(argv)
    if args.simulate_device is not None:
        return _simulate(args)
    if args.workers is not None or args.uint8_model:
        raise UsageError("--workers and --uint8-model go with --simulate-device")
    if args.compare is not None:
        backends = [b.strip() for b in args.compare.split(",") if b.strip()]
        if not backends:
            raise UsageError("--compare needs backends, e.g. --compare torch,ort-cpu")
    else:
        backends = [args.backend or default_backend(args.model)]
    opts = BenchOptions(
        input_hw=tuple(args.input_size) if args.input_size else None,  # type: ignore[arg-type]
        warmup=args.warmup, iterations=args.iterations, profile_runs=args.profile_runs, threads=args.threads,
        images=args.images, torch_checkpoint=args.torch_checkpoint, batch=args.batch, device=args.device,
        cuda_graph=args.cuda_graph,
    )
    # Every flag is checked before anything is printed: a bad one gives exactly one line.
    check_options(args.model, backends, opts)
    check_outputs({"--json": args.json, "--plot": args.plot},
                  {"MODEL": args.model, "--torch-checkpoint": args.torch_checkpoint,
                   **{f"--images {i}": path for i, path in enumerate(args.images or [])}})
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UsageError(f"--plot {args.plot}: the chart is a PNG; give a .png file name")
    if args.iterations < PROTOCOL_MIN_ITERATIONS:
        print(f"trt-bench: note: {args.iterations} timed iterations; the benchmark protocol asks for at least "
              f"{PROTOCOL_MIN_ITERATIONS}", file=sys.stderr)
    report = run_bench(args.model, backends, opts, log=lambda msg: print(f"trt-bench: {msg}", file=sys.stderr))
    print(format_report(report))
    if args.json:
        write_json_atomic(args.json, report)
        print(f"JSON -> {args.json}")
    if args.plot:
        plot_report(report, args.plot)
        print(f"PNG -> {args.plot}")
    return 0


def _simulate(args) -> int:  # type: ignore[no-untyped-def]
    from retinanet_trt.bench.host_pipeline import (
        HostPipelineOptions,
        check_host_options,
        format_host_pipeline,
        run_host_pipeline,
    )

    if args.compare or args.plot or args.cuda_graph or args.torch_checkpoint or args.threads or args.profile_runs is not None:
        raise UsageError("--simulate-device measures one model's host pipeline; drop --compare/--plot/--cuda-graph/"
                         "--torch-checkpoint/--threads/--profile-runs")
    opts = HostPipelineOptions(device_ms=args.simulate_device, images=args.images, rounds=args.iterations,
                               warmup=args.warmup, workers=args.workers, batch=args.batch, uint8_model=args.uint8_model)
    check_host_options(opts)  # before the first progress line
    check_outputs({"--json": args.json}, {"MODEL": args.model, "--uint8-model": args.uint8_model})
    report = run_host_pipeline(args.model, opts, backend=args.backend,
                               log=lambda msg: print(f"trt-bench: {msg}", file=sys.stderr))
    print(format_host_pipeline(report))
    if args.json:
        write_json_atomic(args.json, report)
        print(f"JSON -> {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("trt-bench", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
