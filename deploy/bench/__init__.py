"""Latency of the detector end to end, by part and by FPN level, for several backends in one run:
the API behind trt-bench. Takes a model and backend names; gives a JSON report (median, p90, p99
per part and level, ratios to the first backend) and plots. May import: scoring/, export/ and
what they stand on; three helpers of cli/ (the table printer, trt-export's input size, trt-infer's
loop) inside functions, the exceptions tests/test_import_graph.py lists.

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

from retinanet_trt.bench.backends import PROTOCOL_MIN_ITERATIONS, BenchOptions, load_detector
from retinanet_trt.bench.inputs import synthetic_image
from retinanet_trt.bench.profilers import TrtLevelProfiler, ort_node_groups, ort_profile_runs
from retinanet_trt.bench.report import format_report, plot_report
from retinanet_trt.bench.runner import run_bench
from retinanet_trt.bench.stats import PER_LEVEL_TOLERANCE, STAGES, central_mean, summarize

__all__ = [
    "PER_LEVEL_TOLERANCE", "PROTOCOL_MIN_ITERATIONS", "STAGES", "BenchOptions", "TrtLevelProfiler",
    "central_mean", "format_report", "load_detector", "ort_node_groups", "ort_profile_runs", "plot_report",
    "run_bench", "summarize", "synthetic_image",
]
