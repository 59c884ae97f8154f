"""Conventions across commands: numbers for people, progress bars only on a terminal, one flag vocabulary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet_trt.tables import format_mapping, format_number, format_table

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("value, text", [
    (11170.3, "11170"), (4.0812, "4.08"), (0.717, "0.717"), (123456.7, "123457"), (100.0, "100"),
    (0.00123456, "0.00123"), (-3.14159, "-3.14"), (0.0, "0"), (1.5e-6, "1.5e-06"), (2.5e7, "2.5e+07"),
    (float("inf"), "inf"),
])
def test_numbers_for_people_have_three_digits_and_no_exponent_below_a_million(value: float, text: str) -> None:
    assert format_number(value) == text


def test_tables_and_mappings_never_show_python_syntax() -> None:
    table = format_table(["what", "ms"], [["compute", 11170.25], ["times", {"a_s": 1.23456}]])
    assert "11170" in table and "e+0" not in table and "{" not in table and "a_s 1.23" in table
    assert format_mapping({"export_s": 1.0504, "simplified": True}) == "export_s 1.05, simplified True"


def _image(folder: Path, n: int = 3) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((64, 80, 3), 40 * i, np.uint8)).save(folder / f"i{i}.png")
    return folder


def test_progress_bars_stay_out_of_logs_unless_asked(tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = _image(tmp_path / "imgs")
    cmd = [str(BIN / "trt-infer"), str(tiny_onnx[0]), str(images)]
    quiet = subprocess.run([*cmd, "-o", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and "%|" not in quiet.stderr and "\r" not in quiet.stderr
    forced = subprocess.run([*cmd, "-o", str(tmp_path / "b"), "--progress"], capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0 and "%|" in forced.stderr


@pytest.mark.parametrize("command, flags", [
    ("trt-export", ["-o", "--json"]), ("trt-infer", ["-o"]), ("trt-eval", ["--json"]), ("trt-bench", ["--json", "--plot"]),
    ("trt-inspect", ["--json"]), ("trt-build", ["-o"]), ("trt-calib", ["-o", "--json"]),
])
def test_one_flag_vocabulary(command: str, flags: list[str]) -> None:
    done = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for flag in flags:
        assert f" {flag}" in done.stdout, (command, flag)
    assert "--report" not in done.stdout and "--out " not in done.stdout  # old names are hidden aliases
