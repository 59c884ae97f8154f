"""The FP32 models the precision benchmarks convert, exported fresh by trt-export into a folder.

    demo          the bundled demo model as `trt-export --demo` writes it (static 1x3x256x320)
    demo-dynamic  the same weights with dynamic batch, height and width
    r50           retinanet_r50_fpn, random weights (seed 0), static 1x3x480x640, with the spec's
                  resize set to 480/640 so that `--calib demo` images fit the static input
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MODELS = ("demo", "demo-dynamic", "r50")
DESCRIBE = {
    "demo": "bundled demo model (tiny RetinaNet trained on synthetic shapes), static 1x3x256x320 (trt-export --demo)",
    "demo-dynamic": "bundled demo model, dynamic batch/H/W (trt-export --demo --dynamic)",
    "r50": "retinanet_r50_fpn, random weights (seed 0), static 1x3x480x640, spec resize 480/640",
}


def export_model(name: str, folder: Path) -> Path:
    """Export `name` (one of MODELS) into folder; return the ONNX path."""
    out = folder / f"{name}.onnx"
    if name == "demo":
        args = ["--demo"]
    elif name == "demo-dynamic":
        args = ["--demo", "--dynamic"]
    elif name == "r50":
        from retinanet_trt.spec.presets import get_preset

        spec = get_preset("retinanet_r50_fpn")
        spec.preprocess.min_size, spec.preprocess.max_size = 480, 640
        spec_file = folder / "r50_480x640.spec.json"
        spec_file.write_text(json.dumps(spec.to_dict(), indent=1))
        args = ["--spec", str(spec_file), "--random-init", "--seed", "0", "--input-size", "480", "640"]
    else:
        raise SystemExit(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    subprocess.run([sys.executable, "-m", "retinanet_trt.cli.export", *args, "-o", str(out), "--quiet"], check=True)
    return out
