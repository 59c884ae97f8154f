"""MindSpore RetinaNet: a checkpoint with the real 323 names and shapes (tests/mindspore_factory.py),
saved plain (chunked), with the crc_check trailer and as safetensors, imports with every tensor
consumed; our model reproduces the MindSpore network (tests/mindspore_reference.py) and our pre- and
post-process its eval pipeline's detections on images of several sizes; trt-export runs it with
parity; encrypted, corrupt and CRC-mismatched files are one line and exit 2."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import mindspore_factory as mf
import mindspore_reference as msref
import numpy as np
import onnx
import pytest
import torch
from test_importers import assert_same_detections

from retinanet_trt.cli.export import main as export_main
from retinanet_trt.cli.inspect import main as inspect_main
from retinanet_trt.errors import UsageError
from retinanet_trt.importers import IMPORTERS, ImportResult, import_checkpoint
from retinanet_trt.model.retinanet import RetinaNet, output_names
from retinanet_trt.runtime.postprocess import postprocess
from retinanet_trt.runtime.preprocess import preprocess

SIDE = 256  # a small fixed input keeps the R50 forward quick; the reference takes any side
OPTIMIZER = ["learning_rate", "global_step", "moments.network.multi_box.multi_cls_layers.0.8.weight"]


@dataclass
class Checkpoints:
    values: dict[str, np.ndarray]
    plain: Path
    crc: Path
    safetensors: Path
    result: ImportResult
    model: RetinaNet


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    folder = tmp_path_factory.mktemp("mindspore")
    values = mf.random_values(mf.mindspore_keys(), seed=3)
    training = {**values, "learning_rate": np.array(0.01, np.float32), "global_step": np.array([90000], np.int32),
                OPTIMIZER[2]: np.zeros_like(values["network.multi_box.multi_cls_layers.0.8.weight"])}
    # 1 MiB chunks split 68 of the tensors, as MindSpore's 512 MiB chunks split a large model's.
    plain = mf.save_ckpt(values, folder / "retinanet-500_458.ckpt", chunk_bytes=2**20)
    crc = mf.save_ckpt(training, folder / "crc.ckpt", chunk_bytes=2**20, crc=True)
    st = mf.save_safetensors(values, folder / "retinanet.safetensors")
    result = import_checkpoint(plain)
    return Checkpoints(values, plain, crc, st, result, result.build_model())


@pytest.mark.slow
def test_every_tensor_is_consumed_from_each_format(ckpts: Checkpoints) -> None:
    assert len(ckpts.values) == 323 and sum(v.size for v in ckpts.values.values()) == 63_962_304
    plain = ckpts.result
    assert plain.source == "mindspore" and plain.unused_keys == []
    assert sum(g.count for g in plain.mapping_summary) == 323
    assert "68 tensors were stored in chunks and joined" in plain.notes
    for path, ignored, note in ((ckpts.crc, sorted(OPTIMIZER), "CRC32 trailer verified"),
                                (ckpts.safetensors, [], "safetensors file (MindSpore format), 323 tensors")):
        other = import_checkpoint(path)
        assert other.unused_keys == ignored and other.spec == plain.spec
        assert any(n.startswith(note) for n in other.notes)
        assert all(torch.equal(other.state_dict[k], t) for k, t in plain.state_dict.items())
    spec = plain.spec
    assert (spec.backbone.padding, spec.backbone.relu_before_add, spec.head.shared, spec.head.bias) == (
        "tf_same", True, False, False)
    assert spec.head.num_classes == 80 and spec.preprocess.fixed_size == [600, 600]
    # Background rows dropped, box rows (dy, dx, dh, dw) -> (dx, dy, dw, dh).
    src_cls = ckpts.values["network.multi_box.multi_cls_layers.2.8.weight"].reshape(9, 81, 256, 3, 3)
    assert np.array_equal(plain.state_dict["head.2.cls_pred.weight"].numpy(), src_cls[:, 1:].reshape(720, 256, 3, 3))
    src_loc = ckpts.values["network.multi_box.multi_loc_layers.4.8.weight"].reshape(9, 4, 256, 3, 3)
    assert np.array_equal(plain.state_dict["head.4.box_pred.weight"].numpy(),
                          src_loc[:, [1, 0, 3, 2]].reshape(36, 256, 3, 3))


def _ours(model: RetinaNet, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {n: t.numpy() for n, t in zip(output_names(model.spec), model(torch.from_numpy(x)), strict=True)}


def _to_mindspore_layout(outs: dict[str, np.ndarray], n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Our image n outputs back in MindSpore's channels: a (zero) background row per anchor, (dy, dx, dh, dw)."""
    locs, clss = [], []
    for lv in range(3, 8):
        cls = outs[f"cls_p{lv}"][n].reshape(9, 80, *outs[f"cls_p{lv}"].shape[2:])
        clss.append(np.concatenate([np.zeros_like(cls[:, :1]), cls], axis=1).reshape(9 * 81, *cls.shape[2:]))
        box = outs[f"box_p{lv}"][n].reshape(9, 4, *outs[f"box_p{lv}"].shape[2:])
        locs.append(box[:, [1, 0, 3, 2]].reshape(36, *box.shape[2:]))
    return locs, clss


@pytest.mark.slow
def test_forward_matches_the_mindspore_network(ckpts: Checkpoints) -> None:
    x = np.random.default_rng(1).standard_normal((1, 3, SIDE, SIDE)).astype(np.float32)
    theirs = msref.forward({k: torch.from_numpy(v) for k, v in ckpts.values.items()}, torch.from_numpy(x))
    locs, clss = _to_mindspore_layout(_ours(ckpts.model, x), 0)
    worst = 0.0
    for ours_l, ref_l in zip(locs + clss, theirs[0] + theirs[1], strict=True):
        ref_np = ref_l[0].numpy()
        if ref_np.shape[0] == 729:  # the background rows are not ours to compare
            ours_l, ref_np = ours_l.reshape(9, 81, -1)[:, 1:], ref_np.reshape(9, 81, -1)[:, 1:]
        worst = max(worst, float(np.abs(ours_l - ref_np).max() / np.abs(ref_np).max()))
    print(f"\nmindspore R50 at {SIDE}x{SIDE}: max |ours - MindSpore| / max |MindSpore| = {worst:.2e}")
    assert worst < 1e-5


@pytest.mark.slow
def test_detections_match_the_mindspore_eval_pipeline(ckpts: Checkpoints) -> None:
    """Images of four sizes through our pre-process, model and post-process, and through the reference
    pre-process and eval loop (on our raw outputs in MindSpore's channel layout)."""
    spec = copy.deepcopy(ckpts.result.spec)
    spec.preprocess.fixed_size = [SIDE, SIDE]
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((480, 640), (375, 500), (300, 300),
                                                                              (640, 427))]
    batch = preprocess(images, spec)
    assert batch.images.shape == (4, 3, SIDE, SIDE)
    for image, ours_x in zip(images, batch.images, strict=True):
        assert np.array_equal(ours_x, msref.preprocess(image, SIDE))
    outs = _ours(ckpts.model, batch.images)
    ours = postprocess(outs, spec, batch.metas)
    counts, box_err, score_err = [], 0.0, 0.0
    for n, image in enumerate(images):
        theirs = msref.detections(*_to_mindspore_layout(outs, n), image.shape[:2], SIDE)
        b, s = assert_same_detections(ours[n], theirs, f"image {n} {image.shape[:2]}")  # type: ignore[arg-type]
        box_err, score_err = max(box_err, b), max(score_err, s)
        counts.append(len(ours[n]))
    capped = max(int(np.bincount(d.labels).max()) for d in ours)
    print(f"\nmindspore detections per image {counts} (most in one class {capped}), max box diff {box_err:.2e}, "
          f"max score diff {score_err:.2e}")
    assert min(counts) > 0 and capped == 100  # the per-class cap is exercised


@pytest.mark.slow
def test_trt_inspect_and_export_run_it(ckpts: Checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert inspect_main([str(ckpts.crc)]) == 0
    out = capsys.readouterr().out
    assert "source      mindspore" in out and "MindSpore .ckpt (protobuf), 326 entries" in out
    assert "padding tf_same, ReLU before add" in out and "one head per level" in out
    t0 = time.perf_counter()
    onnx_path = tmp_path / "ms.onnx"
    assert export_main([str(ckpts.plain), "--resize-fixed", str(SIDE), str(SIDE), "--input-size", str(SIDE), str(SIDE),
                        "-o", str(onnx_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out
    graph = onnx.load(onnx_path).graph
    ops = {n.op_type for n in graph.node}
    assert "Pad" not in ops and "BatchNormalization" not in ops  # SAME pads folded into Conv / MaxPool
    pads = {tuple(a.ints) for n in graph.node if n.op_type in ("Conv", "MaxPool") for a in n.attribute if a.name == "pads"}
    assert (0, 0, 1, 1) in pads and (2, 2, 3, 3) in pads  # asymmetric SAME_UPPER pads
    print(f"\nmindspore trt-export {SIDE}x{SIDE}: {out.strip().splitlines()[-1]} ({time.perf_counter() - t0:.1f} s)")


@pytest.mark.parametrize("depth", [101, 152])
def test_research_r101_and_r152_names(depth: int) -> None:
    """research/cv/retinanet_resnet101/152 nest the backbone and FPN under network.fpn.; R152 runs at 640."""
    keys = mf.mindspore_keys(depth)
    tensors = {k: np.broadcast_to(np.zeros((), np.float32), shape) for k, (_, shape) in keys.items()}
    result = IMPORTERS["mindspore"].convert(tensors, [])
    assert result.spec.backbone.depth == depth and not result.unused_keys
    assert result.spec.preprocess.fixed_size == ([640, 640] if depth == 152 else [600, 600])
    assert any("soft-NMS" in n for n in result.notes)


def _cli_error(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert inspect_main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_damaged_and_encrypted_files_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = {"network.backbone.conv1.features.0.weight": np.ones((64, 3, 7, 7), np.float32),
              "network.P6_0.weight": np.ones((256, 2048, 3, 3), np.float32)}
    good = mf.ckpt_bytes(values, crc=True)
    (tmp_path / "enc.ckpt").write_bytes((0x7F3A5ED8).to_bytes(4, "little") + bytes(range(256)) * 40)
    assert "encrypted MindSpore checkpoint (AES-GCM, saved with enc_key)" in _cli_error(tmp_path / "enc.ckpt", capsys)
    (tmp_path / "cut.ckpt").write_bytes(good[:-5000])
    assert "cut.ckpt is truncated or not a MindSpore checkpoint" in _cli_error(tmp_path / "cut.ckpt", capsys)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    (tmp_path / "crc.ckpt").write_bytes(bytes(flipped))
    assert "CRC mismatch" in _cli_error(tmp_path / "crc.ckpt", capsys)
    (tmp_path / "bad.safetensors").write_bytes(len(b'{"a": 1}').to_bytes(8, "little") + b'{"a": 1}')
    assert "bad.safetensors is truncated or not a safetensors file" in _cli_error(tmp_path / "bad.safetensors", capsys)


def test_reader_joins_chunks_and_reads_dtypes(tmp_path: Path) -> None:
    from retinanet_trt.importers.mindspore_ckpt import parse_ckpt

    values = {"a": np.arange(1000, dtype=np.float32).reshape(10, 100), "b": np.array([7], np.int32),
              "c": np.arange(6, dtype=np.float16).reshape(2, 3)}
    tensors, notes = parse_ckpt(mf.ckpt_bytes(values, chunk_bytes=1000, strings={"note": "hello"}))
    assert all(np.array_equal(tensors[k], v) and tensors[k].dtype == v.dtype for k, v in values.items())
    assert tensors["note"] == "hello" and "1 tensors were stored in chunks and joined" in notes
    with pytest.raises(UsageError, match="CRC mismatch"):
        parse_ckpt(mf.ckpt_bytes(values, crc=True)[:-1] + b"\x00")
