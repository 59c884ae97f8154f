"""Atomic file writes: a crash or a bad input never leaves a half-written artifact behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retinanet_trt.errors import UsageError


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, before long work, when the output's folder cannot be written."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise UsageError(f"output folder {parent} does not exist; create it or choose another -o path")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"output folder {parent} is not writable; choose another -o path")
    if out.is_dir():
        raise UsageError(f"output path {out} is a folder; give a file name")
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto `path` only if the block succeeds."""
    out = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent if str(out.parent) else ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays appear in reports; write them as plain numbers and lists.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
