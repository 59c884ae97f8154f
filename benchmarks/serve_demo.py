"""Triton serving of the demo model on this machine: throughput and latency per concurrency, HTTP and
gRPC, dynamic batching on and off, on the bundled Triton 2.51 (CPU) with the python-backend network
running ONNX Runtime CPU.

    python benchmarks/serve_demo.py -o benchmarks/results/serve_demo

The same as `trt-serve export demo.onnx --platform python ... && trt-serve bench REPO`, with the
demo exported first (this needs torch; the serving itself does not). One image (a generated
256 x 256..320 PNG, sent encoded) per request; each level: warm-up, then --requests timed requests
from `concurrency` client threads. Writes OUT.json, OUT.png and OUT.txt.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

from retinanet_trt.demo import load_demo
from retinanet_trt.demo.synthetic import iter_samples
from retinanet_trt.export.pipeline import ExportOptions, export_onnx
from retinanet_trt.fileio import write_bytes_atomic, write_json_atomic
from retinanet_trt.serve import benchmark
from retinanet_trt.serve.repository import ServeOptions, export_repository
from retinanet_trt.tables import format_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/serve_demo"), help="OUT (no suffix)")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=100, help="timed requests per level and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved sweeps (the machine is shared: drift hits all alike)")
    p.add_argument("--instances", type=int, default=1, help="instances of each model")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads per network instance")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    args = p.parse_args(argv)
    levels = benchmark.parse_concurrency(args.concurrency)
    payloads = []
    for sample in iter_samples(16, seed=7, split="bench"):
        buf = io.BytesIO()
        Image.fromarray(sample.image).save(buf, format="PNG")
        payloads.append(buf.getvalue())
    with tempfile.TemporaryDirectory(prefix="serve-demo.") as tmp:
        spec, model = load_demo()
        onnx_path = Path(tmp) / "demo.onnx"
        export_onnx(model, spec, onnx_path, ExportOptions(input_hw=(256, 320), dynamic=True))
        repo = Path(tmp) / "repo"
        export_repository(onnx_path, repo, ServeOptions(
            name="demo", platform="python", backend="ort-cpu", max_batch=args.max_batch, instances=args.instances,
            threads=args.threads, dynamic_batching=True, max_queue_delay_us=args.max_queue_delay_us))
        report = benchmark.bench_repository(repo, payloads, levels, args.requests, ["http", "grpc"], (True, False),
                                            args.rounds)
    report["target"] = "the demo model (trt-serve export --platform python --backend ort-cpu)"
    report["requests_per_level"] = args.requests
    report["images"] = "16 generated demo images (PNG, 256 x 256..320), one per request, sent as IMAGE_BYTES"
    rows = [[r["protocol"], "on" if r["dynamic_batching"] else "off", r["concurrency"], r["throughput_rps"],
             r["latency_ms"]["median"], r["latency_ms"]["p90"], r["latency_ms"]["p99"], r["errors"]]
            for r in report["results"]]
    table = format_table(["protocol", "batching", "clients", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"], rows)
    out = args.output
    write_json_atomic(out.with_suffix(".json"), report)
    benchmark.plot(report, out.with_suffix(".png"))
    cpu = report["versions"].get("cpu", "")
    header = (f"Triton {report['triton_version']} (bundled, CPU), demo model, python-backend network on ONNX Runtime "
              f"{report['versions'].get('onnxruntime')}; {report['repository']['instances']} instance(s), "
              f"{report['repository']['threads']} ORT thread(s), max batch {report['repository']['max_batch_size']}, "
              f"queue delay {report['repository']['max_queue_delay_us']} us when batching; {cpu}, "
              f"{report['versions'].get('cpu_count')} cores; {args.rounds} interleaved rounds of {args.requests} requests per "
              "level (req/s: median round; percentiles: all rounds)\n\n")
    write_bytes_atomic(out.with_suffix(".txt"), (header + table + "\n").encode())
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
