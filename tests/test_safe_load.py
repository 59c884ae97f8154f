"""Safe loading: no code stored in a checkpoint ever runs; damaged files give one clear message."""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_factory import py2_pickle

from retinanet_trt.errors import UsageError
from retinanet_trt.importers import import_checkpoint
from retinanet_trt.importers.safe_load import UnsafeCheckpointError, load_checkpoint_file, load_pickle


class _RunsCommand:
    """Unpickling this calls os.system(command): what a malicious checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class _Module(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)


def _malicious(marker: Path) -> dict:
    return {"model": {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "evil": _RunsCommand(f"touch {marker}")}}


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps(_malicious(marker), protocol=protocol))
    with pytest.raises(UnsafeCheckpointError, match=r"model_final\.pkl: refused to unpickle: the file asks for the "
                                                     r"global (posix|os|nt)\.system, which is not plain data"):
        import_checkpoint(path)
    assert not marker.exists()


def test_malicious_torch_file_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    torch.save(_malicious(marker), path)
    with pytest.raises(UnsafeCheckpointError, match=r"model\.pth: refused to load: the checkpoint's pickle asks for "
                                                    r"(posix|os|nt)\.system"):
        import_checkpoint(path, source="detectron2")
    assert not marker.exists()


def test_malicious_legacy_torch_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "old.pth"
    torch.save(_malicious(marker), path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=r"(posix|os|nt)\.system"):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_a_whole_pickled_module_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(_Module(), path)  # yhenon's train.py saves whole modules like this
    with pytest.raises(UnsafeCheckpointError, match=r"asks for .*_Module.*re-saved as torch\.save\(model\.state_dict\(\)\)"):
        load_checkpoint_file(path)


def test_only_latin1_codecs_encode_is_allowed() -> None:
    # _codecs.encode("abc", "rot13"): PROTO 2, GLOBAL, two BINUNICODE, TUPLE2, REDUCE, STOP
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafeCheckpointError, match="only latin1 is allowed"):
        load_pickle(payload)


def test_persistent_ids_are_refused() -> None:
    with pytest.raises(UnsafeCheckpointError, match="persistent ids"):
        load_pickle(b"\x80\x02X\x03\x00\x00\x00abcQ.")  # BINPERSID


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_plain_data_loads_in_every_protocol(protocol: int) -> None:
    data = {
        "model": collections.OrderedDict(w=np.arange(12, dtype=np.float32).reshape(3, 4), h=np.float16([1.5])),
        "scalar": np.float32(2.5), "int": np.int64(7), "list": [1, 2.0, "x", (3, None, True)], "bytes": b"\x00\xff",
    }
    loaded = load_pickle(pickle.dumps(data, protocol=protocol))
    assert np.array_equal(loaded["model"]["w"], data["model"]["w"]) and loaded["model"]["h"].dtype == np.float16
    assert loaded["scalar"] == np.float32(2.5) and loaded["int"] == 7 and loaded["bytes"] == b"\x00\xff"
    assert loaded["list"] == [1, 2.0, "x", (3, None, True)]


def test_python2_latin1_pickle_of_numpy_arrays(tmp_path: Path) -> None:
    """Detectron's .pkl files are Python 2 pickles: array bytes stored as py2 str."""
    blobs = {"conv1_w": np.linspace(-1, 1, 64 * 3 * 7 * 7, dtype=np.float32).reshape(64, 3, 7, 7),
             "res_conv1_bn_s": np.full(64, 0.5, np.float32)}
    path = tmp_path / "model_final.pkl"
    path.write_bytes(py2_pickle({"blobs": blobs, "cfg": "MODEL:\n  TYPE: retinanet\n"}))
    loaded = load_checkpoint_file(path)
    assert loaded.kind == "pickle" and loaded.obj["cfg"].startswith("MODEL")
    for name, arr in blobs.items():
        assert loaded.obj["blobs"][name].dtype == np.float32 and np.array_equal(loaded.obj["blobs"][name], arr)


def test_numpy_arrays_inside_a_pth_load_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "converted.pth"
    torch.save({"model": {"w": np.ones((2, 3), np.float32), "t": torch.zeros(2)}}, path)
    loaded = load_checkpoint_file(path)
    assert loaded.kind == "torch" and np.array_equal(loaded.obj["model"]["w"], np.ones((2, 3)))


def test_torchvision_reference_checkpoint_with_args_loads(tmp_path: Path) -> None:
    """torchvision's references/detection/train.py saves {"model", "optimizer", "lr_scheduler", "args", "epoch"}."""
    path = tmp_path / "model_25.pth"
    args = argparse.Namespace(lr=0.01, data_path="/coco", model="retinanet_resnet50_fpn", weights=None)
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": {"state": {}}, "args": args, "epoch": 25}, path)
    loaded = load_checkpoint_file(path)
    assert loaded.obj["args"].model == "retinanet_resnet50_fpn" and torch.equal(loaded.obj["model"]["w"], torch.ones(2))


def test_legacy_torch_format_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    loaded = load_checkpoint_file(path)
    assert loaded.kind == "torch" and torch.equal(loaded.obj["w"], torch.ones(3))


def _torch_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.randn(256, 256)}}, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("cut.pth", _torch_bytes()[:1000], r"cut\.pth is truncated or corrupt"),
        ("cut.pkl", pickle.dumps({"model": {"w": np.zeros(1000, np.float32)}})[:2000],
         r"cut\.pkl is truncated or not a checkpoint \(pickle error"),
        ("py2_cut.pkl", py2_pickle({"blobs": {"w": np.zeros(1000, np.float32)}})[:500], r"py2_cut\.pkl is truncated"),
        ("text.pth", b"this is not a checkpoint\n", r"text\.pth is truncated or not a checkpoint"),
        ("empty.pkl", b"", r"empty\.pkl is empty"),
        ("list.pkl", pickle.dumps([np.zeros(3)]), r"list\.pkl holds a list, not a dict of named tensors"),
    ],
)
def test_damaged_or_foreign_files_give_one_clear_message(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(UsageError, match=message) as info:
        import_checkpoint(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"checkpoint .*nope\.pth not found"):
        import_checkpoint(tmp_path / "nope.pth")
