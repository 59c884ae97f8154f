"""Never lose a user's file: outputs that would overwrite inputs, file modes, signals, full disks.

The fault tests run the real commands in a subprocess with a small shim (a sitecustomize.py on
PYTHONPATH) that sends a signal at the moment the artifact is renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet_trt.cli import bench as bench_cli
from retinanet_trt.cli import calib as calib_cli
from retinanet_trt.cli import eval as eval_cli
from retinanet_trt.cli import export as export_cli
from retinanet_trt.cli import infer as infer_cli
from retinanet_trt.cli import inspect as inspect_cli
from retinanet_trt.errors import EnvironmentFault, UsageError
from retinanet_trt.fileio import atomic_path, check_outputs, write_bytes_atomic
from retinanet_trt.plugins import __main__ as plugins_cli

BIN = Path(sys.executable).parent


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "%|" not in ln]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


# ------------------------------------------------------------------------ outputs vs inputs
def test_an_output_equal_to_an_input_is_refused_by_path_symlink_and_hard_link(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(b"model")
    (tmp_path / "link.onnx").symlink_to(src)
    os.link(src, tmp_path / "hard.onnx")
    for alias in (src, tmp_path / "link.onnx", tmp_path / "hard.onnx", tmp_path / "sub" / ".." / "m.onnx"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(UsageError, match="would overwrite the input MODEL"):
            check_outputs({"-o": alias}, {"MODEL": src})
    with pytest.raises(UsageError, match="would overwrite --report"):
        check_outputs({"--report": tmp_path / "r.json", "--json": tmp_path / "r.json"})
    check_outputs({"-o": tmp_path / "out.onnx", "--report": tmp_path / "r.json"}, {"MODEL": src})  # distinct: fine
    assert src.read_bytes() == b"model"


@pytest.mark.parametrize("command", ["export", "inspect", "calib", "eval", "bench", "plugins"])
def test_every_command_refuses_to_overwrite_its_input(command: str, tmp_path: Path, tiny_onnx, capsys) -> None:  # type: ignore[no-untyped-def]
    onnx_path, _ = tiny_onnx
    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_path.read_bytes())
    ck = tmp_path / "ck.pth"
    ck.write_bytes(b"checkpoint bytes")
    main, argv = {
        "export": (export_cli.main, [str(ck), "-o", str(ck)]),
        "inspect": (inspect_cli.main, [str(ck), "--json", str(ck)]),
        "calib": (calib_cli.main, [str(model), "--fp16", "-o", str(tmp_path / "out.onnx"), "--report", str(model)]),
        "eval": (eval_cli.main, [str(model), "--demo", "--json", str(model)]),
        "bench": (bench_cli.main, [str(model), "--json", str(model)]),
        "plugins": (plugins_cli.main, [str(model), "-o", str(model)]),
    }[command]
    before = {p: p.read_bytes() for p in (model, ck)}
    assert main(argv) == 2
    assert "would overwrite" in _one_error_line(capsys)
    assert {p: p.read_bytes() for p in (model, ck)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pth", "m.onnx"]


def test_an_output_under_a_regular_file_is_refused_before_any_work(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "FILE"
    blocker.write_text("x")
    assert export_cli.main(["--demo", "-o", str(blocker / "m.onnx")]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys)


@pytest.mark.parametrize("argv, message", [
    (["--opset", "3"], "supported opsets"),
    (["--input-size", "32000", "32000"], "between 32 and"),
    (["--input-size", "0", "64"], "between 32 and"),
    (["--batch", "0"], "--batch 0"),
])
def test_export_numbers_out_of_range_are_one_line(argv: list[str], message: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert export_cli.main(["--demo", "-o", str(tmp_path / "m.onnx"), *argv]) == 2
    assert message in _one_error_line(capsys)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_artifacts_honour_the_umask_like_a_plain_write(umask: int, mode: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"x")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == mode == plain.stat().st_mode & 0o777


# ------------------------------------------------------------------------------- disk full
def test_a_full_disk_is_one_environment_error_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(EnvironmentFault, match=r"cannot write .*a\.bin: no space left on device"):
        write_bytes_atomic(tmp_path / "a.bin", b"x" * 10)
    assert not list(tmp_path.iterdir())


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, size: str, why_skip: str) -> Iterator[Path]:
    """A tmpfs of `size` at mnt, unmounted afterwards; skips the test where this machine cannot
    mount one (root in a container may), saying which other test covers the case."""
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); {why_skip}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture()
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that fills up."""
    with mounted_tmpfs(tmp_path / "full", "1m", "the simulated ENOSPC test covers it") as mnt:
        yield mnt


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def _real_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and "%|" not in ln]


def test_export_onto_a_full_tmpfs_is_one_line_and_leaves_nothing(small_tmpfs: Path) -> None:
    done = _run([str(BIN / "trt-export"), "--demo", "-o", str(small_tmpfs / "demo.onnx"), "--quiet"])
    assert done.returncode == 1, done.stderr
    err = _real_lines(done.stderr)
    assert len(err) == 1 and "no space left on device" in err[0] and "demo.onnx" in err[0], err
    assert not list(small_tmpfs.iterdir())


def test_calibration_onto_a_full_tmpfs_is_one_line_and_leaves_nothing(small_tmpfs: Path, tmp_path: Path) -> None:
    from retinanet_trt.demo import load_demo
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx

    spec, model = load_demo()  # its FP16 copy (about 3 MB) cannot fit 1 MiB
    src = tmp_path / "demo.onnx"
    export_onnx(model, spec, src, ExportOptions(input_hw=(256, 320)))
    done = _run([str(BIN / "trt-calib"), str(src), "--fp16", "-o", str(small_tmpfs / "demo.fp16.onnx")])
    assert done.returncode == 1, done.stderr
    err = _real_lines(done.stderr)
    assert len(err) == 1 and "no space left on device" in err[0], err
    assert not list(small_tmpfs.iterdir())


def test_infer_onto_a_full_tmpfs_leaves_no_pngs_without_their_json(small_tmpfs: Path, tmp_path: Path, tiny_onnx) -> None:  # type: ignore[no-untyped-def]
    onnx_path, _ = tiny_onnx
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # noise does not compress: 4 x ~0.4 MB of PNG overflow 1 MiB
        Image.fromarray(rng.integers(0, 255, (400, 360, 3), dtype=np.uint8)).save(images / f"n{i}.png")
    done = _run([str(BIN / "trt-infer"), str(onnx_path), str(images), "--out", str(small_tmpfs / "o"), "--min-score", "0"])
    assert done.returncode == 1, done.stderr
    err = _real_lines(done.stderr)
    assert len(err) == 1 and "no space left on device" in err[0], err
    assert not list(small_tmpfs.iterdir())


# ------------------------------------------------------------------------------ signals
SHIM = '''
import os, signal
_real = os.replace
def _replace(src, dst, *a, **k):
    if str(dst).endswith(os.environ["KILL_AT_RENAME_OF"]):
        os.kill(os.getpid(), getattr(signal, os.environ["KILL_WITH"]))
    return _real(src, dst, *a, **k)
os.replace = _replace
'''


def _shim_env(tmp_path: Path, target: str, sig: str) -> dict[str, str]:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SHIM)
    return {"PYTHONPATH": str(shim), "KILL_AT_RENAME_OF": target, "KILL_WITH": sig}


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_export_killed_at_the_rename_leaves_no_partial_file_and_reruns(sig: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    cmd = [str(BIN / "trt-export"), "--demo", "-o", str(out / "demo.onnx"), "--quiet"]
    done = _run(cmd, _shim_env(tmp_path, "demo.onnx", sig))
    if sig == "SIGTERM":
        assert done.returncode == 128 + signal.SIGTERM, done.stderr
        err = _real_lines(done.stderr)
        assert len(err) == 1 and "terminated" in err[0], err
        assert not list(out.iterdir())  # the handler removed the temporary file
    else:
        assert done.returncode == -signal.SIGKILL
        assert not (out / "demo.onnx").exists()  # never a partial artifact under the real name
    again = _run(cmd)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == ["demo.onnx"]  # a killed run's .part is cleaned up


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_calibration_killed_while_writing_its_cache_reruns_cleanly(sig: str, tmp_path: Path, tiny_onnx) -> None:  # type: ignore[no-untyped-def]
    onnx_path, _ = tiny_onnx
    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_path.read_bytes())
    cmd = [str(BIN / "trt-calib"), str(model), "--int8", "--calib", "demo", "--calib-images", "2", "--no-map",
           "--quiet", "-o", str(tmp_path / "m.int8.onnx")]
    done = _run(cmd, _shim_env(tmp_path, ".calib.json", sig))
    assert done.returncode == (128 + signal.SIGTERM if sig == "SIGTERM" else -signal.SIGKILL), done.stderr
    assert not list(tmp_path.glob("m.int8*"))
    again = _run(cmd)
    assert again.returncode == 0, again.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert (tmp_path / "m.int8.onnx").is_file()


def test_sigterm_inside_an_atomic_write_removes_the_temporary(tmp_path: Path) -> None:
    from retinanet_trt.cli.common import run_main

    def body(argv: list[str] | None) -> int:
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        return 0

    assert run_main("t", body, []) == 128 + signal.SIGTERM
    assert not list(tmp_path.iterdir())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


# ------------------------------------------------------------------------------ trt-infer
def _noise(path: Path, hw: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*hw, 3), dtype=np.uint8)).save(path)
    return path


def test_infer_names_outputs_uniquely_and_says_which_belongs_to_which(tmp_path: Path, tiny_onnx) -> None:  # type: ignore[no-untyped-def]
    onnx_path, _ = tiny_onnx
    inputs = [_noise(tmp_path / "a" / "x.png"), _noise(tmp_path / "b" / "x.png", seed=1), _noise(tmp_path / "a" / "x.jpg", seed=2)]
    out = tmp_path / "out"
    assert infer_cli.main([str(onnx_path), *map(str, inputs), "--out", str(out), "--min-score", "0"]) == 0
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == ["a/x.jpg.det.png", "a/x.png.det.png", "b/x.png.det.png"]
    results = json.loads((out / "detections.json").read_text())
    pairs = {(r["file_name"], r["annotated"]) for r in results}
    assert pairs <= {(str(p), n) for p, n in zip(inputs, ["a/x.png.det.png", "b/x.png.det.png", "a/x.jpg.det.png"])}
    assert {r["annotated"] for r in results} <= set(pngs)


@pytest.mark.parametrize("hw", [(1, 20000), (20000, 1)])
def test_infer_skips_an_unfit_image_and_processes_the_rest(hw: tuple[int, int], tmp_path: Path, tiny_onnx, capsys) -> None:  # type: ignore[no-untyped-def]
    onnx_path, _ = tiny_onnx
    folder = tmp_path / "imgs"
    _noise(folder / "ok.png")
    Image.fromarray(np.zeros((*hw, 3), np.uint8)).save(folder / "thin.png")
    out = tmp_path / "out"
    assert infer_cli.main([str(onnx_path), str(folder), "--out", str(out), "--min-score", "0"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "skipped" in ln]
    assert len(err) == 1 and "thin.png" in err[0] and err[0].count("thin.png") == 1
    assert (out / "ok.png.det.png").is_file() and not (out / "thin.png.det.png").exists()


@pytest.mark.parametrize("case", ["file", "proc", "min_score", "no_images"])
def test_infer_bad_out_or_options_fail_before_writing_anything(case: str, tmp_path: Path, tiny_onnx, capsys) -> None:  # type: ignore[no-untyped-def]
    onnx_path, _ = tiny_onnx
    image = _noise(tmp_path / "in" / "x.png")
    (tmp_path / "afile").write_text("keep")
    out, extra, inputs = str(tmp_path / "new_out"), [], [str(image)]
    if case == "file":
        out = str(tmp_path / "afile")
    elif case == "proc":
        out = "/proc/x"
    elif case == "min_score":
        extra = ["--min-score", "2"]
    else:
        inputs = [str(tmp_path / "in" / "missing.png")]
    assert infer_cli.main([str(onnx_path), *inputs, "--out", out, *extra]) == 2
    _one_error_line(capsys)
    assert not (tmp_path / "new_out").exists()
    assert (tmp_path / "afile").read_text() == "keep"


def test_infer_where_every_image_fails_writes_no_empty_json(tmp_path: Path, tiny_onnx, capsys) -> None:  # type: ignore[no-untyped-def]
    onnx_path, _ = tiny_onnx
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    assert infer_cli.main([str(onnx_path), str(bad), "--out", str(out)]) == 2
    assert not out.exists()


@pytest.fixture()
def read_only_folder(tmp_path: Path, tiny_onnx) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """A read-only mount holding the tiny model: read-only even for root, unlike chmod."""
    with mounted_tmpfs(tmp_path / "ro", "16m", "chmod-based tests cover non-root users") as mnt:
        (mnt / "m.onnx").write_bytes(tiny_onnx[0].read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt


def test_a_model_in_a_read_only_folder_calibrates_and_outputs_there_are_refused(read_only_folder: Path, tmp_path: Path,
                                                                                 capsys) -> None:  # type: ignore[no-untyped-def]
    model = read_only_folder / "m.onnx"
    out = tmp_path / "m.int8.onnx"
    assert calib_cli.main([str(model), "--int8", "--calib", "demo", "--calib-images", "2", "--no-map", "-o", str(out)]) == 0
    assert out.is_file() and sorted(p.name for p in read_only_folder.iterdir()) == ["m.onnx"]
    capsys.readouterr()
    assert export_cli.main(["--demo", "-o", str(read_only_folder / "x.onnx")]) == 2
    assert "read-only file system" in _one_error_line(capsys).lower()
    assert infer_cli.main([str(model), str(_noise(tmp_path / "i" / "a.png")), "-o", str(read_only_folder / "o")]) == 2
    assert "cannot write in" in _one_error_line(capsys)
