"""trt-serve: serve a model at scale on existing engines (DESIGN.md principle 8).

    export      a Triton model repository (preprocess -> network -> postprocess ensemble)
    run         the bundled Triton server on a repository, on 127.0.0.1, until Ctrl-C / SIGTERM
    bench       a bounded load test over HTTP and gRPC (JSON + PNG)
    deepstream  a DeepStream nvinfer config and labels for Jetson
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from retinanet_trt.cli.common import EXIT_TERMINATED, check_count, make_parser, run_main
from retinanet_trt.errors import EnvironmentFault, Terminated, UsageError
from retinanet_trt.tables import format_table

EXAMPLES = """\
  trt-serve export model.engine -o repo/ --name detector --max-batch 8 --instances 2 --dynamic-batching
  trt-serve export model.onnx -o repo/ --platform python --backend ort-cpu
  trt-serve run repo/
  trt-serve bench repo/ --concurrency 1,4,16 --requests 200 -o bench.json --plot bench.png
  trt-serve bench 127.0.0.1:8000 --model detector --grpc-url 127.0.0.1:8001 -o bench.json
  trt-serve deepstream model.end2end.engine -o ds/ --batch-size 4
"""


def build_parser() -> argparse.ArgumentParser:
    from retinanet_trt.serve import repository as r

    p = make_parser("trt-serve", "Serve a RetinaNet with NVIDIA Triton Inference Server or DeepStream: write a Triton "
                    "model repository, run it locally, load-test it, or write an nvinfer config.", EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True, metavar="{export,run,bench,deepstream}")

    e = sub.add_parser("export", help="write a Triton model repository for an .onnx or .engine")
    e.add_argument("model", help="an .onnx file (trt-export) or a TensorRT .engine with its sidecar (trt-build)")
    e.add_argument("-o", "--output", type=Path, required=True, help="repository folder (new, empty, or an earlier export)")
    e.add_argument("--name", default="retinanet", help="the ensemble's model name (default retinanet)")
    e.add_argument("--platform", choices=r.PLATFORMS,
                   help="the network model: default tensorrt_plan for an engine, onnxruntime_onnx for an ONNX")
    e.add_argument("--backend", choices=r.PYTHON_BACKENDS, help="--platform python: retinanet_trt backend "
                   "(default ort-cpu for an ONNX, trt for an engine)")
    e.add_argument("--max-batch", type=int, default=8, help="max images per request and per network batch (default 8)")
    e.add_argument("--instances", type=int, default=1, help="instances of each model (default 1)")
    e.add_argument("--dynamic-batching", action="store_true", help="let Triton batch concurrent requests for the network")
    e.add_argument("--max-queue-delay-us", type=int, default=100, help="dynamic batching's wait for more requests (default 100)")
    e.add_argument("--end2end", action="store_true", help="in-graph decode + NMS: an end-to-end ONNX is used as is, a raw "
                   "one is converted (plugins/end2end.py); the ensemble then has no post-process model")
    e.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per python network instance (0: ORT decides)")
    e.add_argument("--ort-tensorrt", action="store_true", help="onnxruntime_onnx with TensorRT as execution accelerator")
    e.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto", help="instance kind of the network "
                   "(auto: GPU unless the python network runs ORT on CPU)")
    e.add_argument("--gpus", help="network instances on these GPUs only, e.g. 0,1 (default: --instances on every GPU)")
    e.add_argument("--max-image-pixels", type=int, default=40_000_000, help="larger images are refused (default 40e6)")
    e.add_argument("--max-image-bytes", type=int, default=64 * 2**20, help="larger encoded images are refused (default 64 MiB)")
    e.add_argument("--json", action="store_true", help="print the export record as JSON")

    run = sub.add_parser("run", help="start the bundled Triton on a repository (127.0.0.1) until Ctrl-C or SIGTERM")
    run.add_argument("repo", type=Path, help="a model repository written by trt-serve export")
    for proto in ("http", "grpc", "metrics"):
        run.add_argument(f"--{proto}-port", type=int, help=f"{proto} port (default: a free one)")
    run.add_argument("--log", type=Path, help="Triton's log file (default: a file in $TMPDIR)")
    run.add_argument("--ready-timeout", type=float, default=180.0,
                     help="seconds to wait for readiness (default 180, at most 3600)")

    b = sub.add_parser("bench", help="load-test a repository (started here, batching on and off) or a server URL")
    b.add_argument("target", help="a trt-serve repository folder, or a running server's HTTP host:port")
    b.add_argument("--concurrency", default="1,4,16", help="concurrent clients per level (default 1,4,16; at most 1024)")
    b.add_argument("--requests", type=int, default=200, help="timed requests per level and round (default 200)")
    b.add_argument("--rounds", type=int, default=1, help="sweeps over every level, interleaved (default 1)")
    b.add_argument("--protocols", default="http,grpc", help="http, grpc or both (default)")
    b.add_argument("--batching", help="repository target: dynamic batching settings (default on,off)")
    b.add_argument("--model", help="URL target: the ensemble's name (default retinanet)")
    b.add_argument("--grpc-url", help="URL target: the gRPC host:port (default: the HTTP host, port 8001)")
    b.add_argument("--images", type=Path, help="a folder of images to send (default: 16 generated demo images)")
    b.add_argument("-o", "--output", type=Path, required=True, help="results JSON")
    b.add_argument("--plot", type=Path, help="throughput / p99 PNG")

    d = sub.add_parser("deepstream", help="write a DeepStream nvinfer config (config_infer_primary.txt) and labels.txt")
    d.add_argument("model", help="an .onnx or .engine (an end-to-end one is parsed by DeepStream's EfficientNMS parser)")
    d.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    d.add_argument("--batch-size", type=int, default=1, help="nvinfer batch-size (default 1)")
    return p


def _gpus(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--gpus {text!r}: give comma-separated GPU indices, e.g. 0,1") from None


def _export(args: argparse.Namespace) -> int:
    from retinanet_trt.serve.repository import ServeOptions, export_repository

    opts = ServeOptions(name=args.name, platform=args.platform, max_batch=args.max_batch, instances=args.instances,
                        dynamic_batching=args.dynamic_batching, max_queue_delay_us=args.max_queue_delay_us,
                        end2end=args.end2end, backend=args.backend, threads=args.threads, ort_tensorrt=args.ort_tensorrt,
                        device=args.device, gpus=_gpus(args.gpus), max_image_pixels=args.max_image_pixels,
                        max_image_bytes=args.max_image_bytes)
    record = export_repository(args.model, args.output, opts)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        models = record["models"]
        print(f"wrote {args.output}: ensemble {models['ensemble']} = {models['preprocess']} -> {models['network']} "
              f"({record['platform']}) -> {models['postprocess']}; start it with `trt-serve run {args.output}` "
              f"(see {args.output / 'README.md'})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from retinanet_trt.fileio import check_outputs
    from retinanet_trt.serve.server import Ports, TritonServer

    ports = None
    given = (args.http_port, args.grpc_port, args.metrics_port)
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise UsageError("give all of --http-port, --grpc-port and --metrics-port, or none (free ports are picked)")
        if not all(1 <= v <= 65535 for v in given):
            raise UsageError(f"--http-port/--grpc-port/--metrics-port {' '.join(map(str, given))}: give ports 1..65535")
        ports = Ports(*given)
    if not 0 < args.ready_timeout <= 3600:  # also refuses NaN
        raise UsageError(f"--ready-timeout {args.ready_timeout:g}: give seconds, > 0 and <= 3600")
    check_outputs({"--log": args.log})
    server = TritonServer(args.repo, ports=ports, log_path=args.log, ready_timeout_s=args.ready_timeout)
    try:
        server.start()
        assert server.ports is not None and server.install is not None
        assert server.process is not None
        print(f"Triton {server.install.version} ready on {args.repo}: HTTP {server.http_url}, gRPC {server.grpc_url}, "
              f"metrics 127.0.0.1:{server.ports.metrics}; pid {server.process.pid}, log {server.log_path}; "
              "Ctrl-C stops it", flush=True)
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
        raise EnvironmentFault(f"Triton stopped by itself: {server.log_tail()} (log: {server.log_path})")
    except (KeyboardInterrupt, Terminated) as exc:
        server.stop()
        print(f"trt-serve: {'interrupted' if isinstance(exc, KeyboardInterrupt) else 'terminated (SIGTERM)'}; "
              "Triton stopped, no process left", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED
    finally:
        server.stop()


def _payloads(folder: Path | None) -> list[bytes]:
    if folder is not None:
        from retinanet_trt.runtime.images import find_images

        paths = find_images([folder])
        if not paths:
            raise UsageError(f"--images {folder}: no images found")
        return [p.read_bytes() for p in paths]
    from PIL import Image

    from retinanet_trt.demo.synthetic import iter_samples

    out = []
    for sample in iter_samples(16, seed=7, split="bench"):
        buf = io.BytesIO()
        Image.fromarray(sample.image).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _batching(text: str) -> list[bool]:
    settings = {"on": True, "off": False}
    try:
        values = [settings[v.strip()] for v in text.split(",") if v.strip()]
    except KeyError:
        values = []
    if not values:
        raise UsageError(f"--batching {text!r}: give on, off or on,off")
    return values


def _bench(args: argparse.Namespace) -> int:
    from retinanet_trt.fileio import check_outputs, write_json_atomic
    from retinanet_trt.serve import benchmark as bm

    levels = bm.parse_concurrency(args.concurrency)
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if not protocols or set(protocols) - {"http", "grpc"}:
        raise UsageError(f"--protocols {args.protocols!r}: give http, grpc or http,grpc")
    check_count("--requests", args.requests, 1, bm.MAX_REQUESTS)
    check_count("--rounds", args.rounds, 1, bm.MAX_ROUNDS)
    # What the target is decides which flags apply; all is checked before any image is made.
    repository = bm.is_repository(args.target)
    if repository:
        if args.model or args.grpc_url:
            raise UsageError("--model and --grpc-url name a running server's ensemble and gRPC port; a repository "
                             "target is started here with its own, drop them")
        batching = _batching(args.batching or "on,off")
    elif Path(args.target).exists():
        raise UsageError(f"{args.target} is a folder but not a trt-serve repository; give a repository or host:port")
    else:
        if args.batching is not None:
            raise UsageError("--batching varies a repository target started here; a running server batches as it "
                             "was started, drop --batching")
        http_url = bm.server_address(args.target)
        if http_url is None:
            raise UsageError(f"{args.target!r} is neither a trt-serve repository folder nor a server's HOST:PORT; "
                             "give the folder `trt-serve export -o` wrote or a running server's address, "
                             "e.g. 127.0.0.1:8000")
        grpc_url = bm.server_address(args.grpc_url) if args.grpc_url else f"{http_url.rsplit(':', 1)[0]}:8001"
        if grpc_url is None:
            raise UsageError(f"--grpc-url {args.grpc_url!r}: give the server's gRPC HOST:PORT, e.g. 127.0.0.1:8001")
    check_outputs({"-o": args.output, "--plot": args.plot})
    payloads = _payloads(args.images)
    if repository:
        report = bm.bench_repository(Path(args.target), payloads, levels, args.requests, protocols, batching, args.rounds)
    else:
        report = bm.bench_url(http_url, grpc_url, args.model or "retinanet", payloads, levels, args.requests,
                              protocols, args.rounds)
    report["requests_per_level"] = args.requests
    write_json_atomic(args.output, report)
    if args.plot:
        bm.plot(report, args.plot)
    rows = [[r["protocol"], {True: "on", False: "off"}.get(r["dynamic_batching"], "?"), r["concurrency"],
             r["throughput_rps"], r["latency_ms"].get("median", float("nan")), r["latency_ms"].get("p90", float("nan")),
             r["latency_ms"].get("p99", float("nan")), r["errors"]] for r in report["results"]]
    print(format_table(["protocol", "batching", "clients", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"], rows))
    print(f"-> {args.output}" + (f", {args.plot}" if args.plot else ""))
    return 0


def _deepstream(args: argparse.Namespace) -> int:
    from retinanet_trt.serve.deepstream import CONFIG, write_deepstream

    report: dict[str, Any] = write_deepstream(args.model, args.output, args.batch_size)
    print(f"wrote {args.output / CONFIG} ({report['parsing']}); network input {report['network_input_hw'][0]}x"
          f"{report['network_input_hw'][1]}")
    return 0


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return {"export": _export, "run": _run, "bench": _bench, "deepstream": _deepstream}[args.command](args)


def main(argv: list[str] | None = None) -> int:
    return run_main("trt-serve", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
