"""The main job on the embedded default: export the bundled demo model and print its parity report."""

from __future__ import annotations

import sys
from pathlib import Path

from retinanet_trt.cli import export as export_cli
from retinanet_trt.cli.common import make_parser, run_main


def _main(argv: list[str] | None) -> int:
    p = make_parser("retinanet-trt demo", __doc__ or "", "  python3 run.py demo\n  python3 run.py demo --out out/demo\n")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for every artifact")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return export_cli.main(["--demo", "-o", str(args.out / "demo.onnx"), "--report", str(args.out / "export_report.json")])


def main(argv: list[str] | None = None) -> int:
    return run_main("retinanet-trt demo", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
