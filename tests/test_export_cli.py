"""trt-export as a user runs it: reports, one-line errors with exit status 2, no partial files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from retinanet_trt.cli.export import main


def _run(args: list[str], capsys) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_tiny_export_writes_onnx_and_report(tmp_path, capsys) -> None:
    out, rep = tmp_path / "t.onnx", tmp_path / "r.json"
    code, stdout, _ = _run(["--preset", "tiny", "--random-init", "--input-size", "96", "128", "-o", str(out),
                            "--report", str(rep)], capsys)
    assert code == 0 and out.is_file()
    report = json.loads(rep.read_text())
    assert set(report["parity"][0]["outputs"]) == {f"{k}_p{lv}" for k in ("cls", "box") for lv in range(3, 8)}
    for r in report["parity"][0]["outputs"].values():
        assert set(r) == {"max_abs", "max_rel", "sqnr_db", "cosine"} and r["max_rel"] <= 1e-4
    assert {"fold_s", "export_s", "simplify_s", "parity_s"} <= set(report["times_s"])
    assert report["op_counts"]["Conv"] > 0 and "PASS" in stdout


def _spec_file(tmp_path, mutate) -> str:  # type: ignore[no-untyped-def]
    from retinanet_trt.spec.presets import get_preset

    data = get_preset("tiny").to_dict()
    mutate(data)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t: ["--preset", "nope", "--random-init", "-o", f"{t}/x.onnx"], "unknown preset 'nope'"),
        (lambda t: ["--preset", "tiny", "--random-init", "--input-size", "100", "128", "-o", f"{t}/x.onnx"],
         "not divisible by 32"),
        (lambda t: ["--preset", "tiny", "--random-init", "--input-size", "96", "128", "-o", f"{t}/missing/x.onnx"],
         "does not exist"),
        (lambda t: ["--preset", "tiny", "--input-size", "96", "128", "-o", f"{t}/x.onnx"], "add --random-init"),
        (lambda t: ["--spec", _spec_file(t, lambda d: d["head"].update(num_anchors=7)), "--random-init",
                    "-o", f"{t}/x.onnx"], "inconsistent spec"),
        (lambda t: ["--spec", _spec_file(t, lambda d: d["fpn"].update(p6_from="c4")), "--random-init",
                    "-o", f"{t}/x.onnx"], "fpn.p6_from"),
        (lambda t: ["--spec", _spec_file(t, lambda d: d.update(colour="red")), "--random-init",
                    "-o", f"{t}/x.onnx"], "unknown field"),
        (lambda t: ["--preset", "tiny", "--random-init", "--batch", "0", "-o", f"{t}/x.onnx"], "--batch 0"),
        (lambda t: ["--preset", "tiny", "--random-init"], "required: -o"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, make_args, message) -> None:  # type: ignore[no-untyped-def]
    code, _, err = _run(make_args(tmp_path), capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert not any(p.suffix in (".onnx", ".part") for p in tmp_path.rglob("*")), "a partial file was left behind"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_folder(tmp_path, capsys) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, _, err = _run(["--preset", "tiny", "--random-init", "-o", str(ro / "x.onnx")], capsys)
    assert code == 2 and "not writable" in err


def test_output_that_is_a_folder_is_refused(tmp_path, capsys) -> None:
    code, _, err = _run(["--preset", "tiny", "--random-init", "-o", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err


def test_console_script_help_has_examples() -> None:
    for tool in ("trt-export", "trt-build", "trt-bench", "trt-infer", "trt-eval", "trt-calib", "trt-inspect"):
        exe = os.path.join(os.path.dirname(sys.executable), tool)
        result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (tool, result.stderr)
        assert "example" in result.stdout.lower(), tool
