"""Every command example in the README runs as written, in order, on real photos (scikit-image's).

Only the speed knobs of trt-bench are turned down (the R50 comparison would otherwise time 20
iterations per backend); trt-build must refuse cleanly here (no TensorRT); `trt-serve run` starts
a long-running server and is exercised by the serving tests instead.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import checkpoint_factory as cf
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent


def readme_examples() -> list[str]:
    text = README.read_text()
    block = text.split("Examples:", 1)[1].split("\n\n", 2)[1]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("trt-")]


def test_the_readme_lists_examples_for_the_main_commands() -> None:
    commands = {shlex.split(line)[0] for line in readme_examples()}
    assert {"trt-export", "trt-eval", "trt-infer", "trt-calib", "trt-build", "trt-bench"} <= commands


@pytest.mark.slow
def test_every_readme_example_runs_on_real_photos(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut.png", "coffee.png"):
        with resources.as_file(resources.files("skimage.data") / name) as src:
            shutil.copy(src, photos / name)
    cf.save("detectron2", cf.synthesise("detectron2", seed=0), tmp_path / "model_final.pkl")
    for line in readme_examples():
        for part in line.split("&&"):
            argv = shlex.split(part.split("  #")[0])
            if argv[:2] == ["trt-serve", "run"]:
                continue  # a server that runs until stopped: the serving tests start and stop it
            if argv[0] == "trt-bench":
                argv += ["--warmup", "1", "--iterations", "2", "--profile-runs", "1"]
            done = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=900)
            if argv[0] == "trt-build":  # no TensorRT on this machine: one line, exit 2, no file
                assert done.returncode == 2 and "cannot build an engine here" in done.stderr, done.stderr
                assert not (tmp_path / "demo.fp16.engine").exists()
                continue
            assert done.returncode == 0, f"{part}\n{done.stderr[-2000:]}"
    assert (tmp_path / "out" / "infer" / "detections.json").is_file()
    assert re.search(r"\d", (tmp_path / "ap.json").read_text())
