"""trt-infer: not built yet (see the open issues); says so instead of failing obscurely."""

from __future__ import annotations

import sys

from retinanet_trt.cli.common import make_parser, run_main
from retinanet_trt.errors import UsageError


def _main(argv: list[str] | None) -> int:
    make_parser("trt-infer", "trt-infer is not built yet.", "  (none yet)\n").parse_args(argv)
    raise UsageError("trt-infer is not built yet in this version of retinanet-trt")


def main(argv: list[str] | None = None) -> int:
    return run_main("trt-infer", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
