"""--batch, --workers and --queue-mb: how trt-infer and trt-eval run the overlapped host pipeline."""

from __future__ import annotations

import argparse
from typing import Any

from retinanet_trt.runtime.pipeline import DEFAULT_QUEUE_MB, MAX_WORKERS, check_workers, default_workers

MAX_QUEUE_MB = 1 << 20  # a terabyte of in-flight batches: anything above is a typo


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=1, help="images per inference (default 1)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help=f"host threads decoding and pre-processing the next batches and post-processing the "
                             f"previous ones while the backend runs (default: one per core, here {default_workers()}; "
                             f"0: overlap off, one step after the other; at most {MAX_WORKERS})")
    parser.add_argument("--queue-mb", type=float, default=DEFAULT_QUEUE_MB, metavar="MB",
                        help=f"memory bound on the batches in flight: inputs, outputs, decoded pixels "
                             f"(default {DEFAULT_QUEUE_MB:g})")


def pipeline_options(args: argparse.Namespace) -> dict[str, Any]:
    """Detector.stream's keywords from the parsed flags (checked, UsageError in one line)."""
    from retinanet_trt.errors import UsageError

    if not 1 <= args.batch <= 256:
        raise UsageError(f"--batch {args.batch}: give 1..256 images per inference")
    if not 0 < args.queue_mb <= MAX_QUEUE_MB:  # also refuses nan and inf
        raise UsageError(f"--queue-mb {args.queue_mb}: give a number of megabytes, 0 < MB <= {MAX_QUEUE_MB:g}")
    return {"batch_size": args.batch, "workers": check_workers(args.workers), "max_queue_mb": args.queue_mb}
