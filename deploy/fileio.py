"""Atomic file writes: a crash, a signal or a bad input never leaves a half-written artifact behind.

Every artifact, report, plot and cache is written to a hidden temporary name in its own folder and
renamed onto its path only when complete. The temporary name carries the writer's pid, so a run
killed with SIGKILL (which no handler sees) leaves at most a `.NAME.<pid>.*.part` file that the
next write of NAME removes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from retinanet_trt.errors import EnvironmentFault, UsageError

# Write failures that are the machine's, not the input's: reported as one line naming the path.
_WRITE_FAULTS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EFBIG: "file too large", errno.EIO: "I/O error"}
PathLike = str | os.PathLike[str]


def check_writable(path: PathLike) -> Path:
    """Fail early, before long work, when `path` cannot be written as a file (probed for real)."""
    out = Path(path)
    if str(path).endswith(os.sep) or out.is_dir():
        raise UsageError(f"output path {out} is a folder; give a file name")
    if out.exists() and not out.is_file():
        # a rename would replace a device, FIFO or socket with a regular file (/dev/null included)
        raise UsageError(f"output path {out} is not a regular file (a device, FIFO or socket); give a file path")
    parent = out.parent if str(out.parent) else Path(".")
    for folder in (parent, *parent.parents):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"output path {out}: {folder} is a file, not a folder; choose another path")
        if folder.exists():
            break
    if not parent.exists():
        raise UsageError(f"output folder {parent} does not exist; create it or choose another path")
    check_folder_writable(parent, f"output path {out}")
    return out


def check_folder_writable(folder: Path, what: str) -> None:
    """UsageError unless a file can really be created in `folder` (os.access is wrong for root,
    read-only mounts and /proc)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".retinanet_trt.probe.", dir=folder)
    except OSError as exc:
        raise UsageError(f"{what}: cannot write in {folder} ({exc.strerror}); choose another path") from None
    os.close(fd)
    os.unlink(probe)


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (engines and models are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: PathLike, what: str, hint: str) -> Any:
    """The JSON in `path`; UsageError naming `what` and saying what to do (`hint`) when the file is
    missing, unreadable or not JSON."""
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"{what} {file} is a folder, not a file; {hint}")
    if not file.is_file():
        raise UsageError(f"{what} {file} not found; {hint}")
    try:
        return json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {file} is not valid JSON ({exc}); {hint}") from None
    except RecursionError:
        raise UsageError(f"{what} {file} nests too deeply to read (thousands of levels); {hint}") from None
    except OSError as exc:
        raise UsageError(f"{what} {file} cannot be read ({exc.strerror}); {hint}") from None


def _identity(path: Path) -> tuple[Any, ...]:
    """What makes two paths the same file: device and inode when it exists (symlinks and hard
    links included), else the resolved path."""
    try:
        st = path.stat()
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def check_outputs(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None] | None = None) -> None:
    """Refuse a run whose outputs would overwrite one of its inputs or each other.

    outputs / inputs: {what the user called it (e.g. "--report"): path or None}. Each output is also
    checked to be writable. Raises UsageError naming both sides.
    """
    seen: dict[tuple[Any, ...], str] = {}
    for label, path in (inputs or {}).items():
        if path is not None and Path(path).exists():
            seen.setdefault(_identity(Path(path)), f"the input {label} ({path})")
            seen.setdefault(("path", os.path.realpath(path)), f"the input {label} ({path})")
    for label, path in outputs.items():
        if path is None:
            continue
        out = check_writable(path)
        keys = {_identity(out), ("path", os.path.realpath(out))}
        for key in keys:
            if key in seen:
                raise UsageError(f"{label} {path} would overwrite {seen[key]}; choose another path")
        for key in keys:
            seen[key] = f"{label} ({path})"


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask can only set it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale_parts(out: Path) -> None:
    """Remove `.NAME.<pid>.*.part[SUFFIX]` files of writers that no longer run (killed by SIGKILL)."""
    folder = out.parent if str(out.parent) else Path(".")
    for part in folder.glob(f".{out.name}.*.part*"):
        pid = part.name[len(out.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                part.unlink()
        except PermissionError:
            pass  # another user's live process


def write_fault(path: PathLike, exc: OSError) -> EnvironmentFault | None:
    """An EnvironmentFault naming `path` for a disk-full / read-only style OSError, else None."""
    reason = _WRITE_FAULTS.get(exc.errno or 0)
    if reason is None:
        return None
    return EnvironmentFault(f"cannot write {path}: {reason}; free space or choose another path (nothing was written)")


@contextlib.contextmanager
def faults_name(path: PathLike) -> Iterator[None]:
    """Turn a disk-full / read-only OSError inside the block into one EnvironmentFault naming `path`."""
    try:
        yield
    except OSError as exc:
        fault = write_fault(path, exc)
        if fault is None:
            raise
        raise fault from None


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto `path` only if the block succeeds.
    suffix: after the temporary name's `.part`, for readers that go by extension (".onnx").

    The file gets the mode a plain write would (0666 less the umask), not mkstemp's 0600, so
    a Triton container or a colleague can read it. A disk-full error becomes EnvironmentFault.
    """
    out = check_writable(path)
    folder = out.parent if str(out.parent) else Path(".")
    _remove_stale_parts(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.{os.getpid()}.", suffix=f".part{suffix}", dir=folder)
    try:
        with faults_name(out):
            os.fchmod(fd, 0o666 & ~_umask())
            os.close(fd)
            yield Path(tmp)
            os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def existing_ancestor(folder: Path, what: str) -> Path:
    """The nearest existing folder at or above `folder` (where it would be created), checked writable;
    UsageError when `folder` is a file or sits under one."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder} is a file; give a folder (it is created if missing)")
    anchor = folder
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise UsageError(f"{what} {folder}: {anchor} is a file, not a folder; choose another {what}")
    check_folder_writable(anchor, f"{what} {folder}")
    return anchor


@contextlib.contextmanager
def staged_folder(out: Path, what: str = "-o", last: str | None = None) -> Iterator[Path]:
    """A hidden staging folder whose files replace their namesakes in the folder `out` when the
    block succeeds (the file named `last` moves last, so a reader that sees it sees the rest);
    on any failure, signal or full disk nothing is moved and the staging folder is removed."""
    anchor = existing_ancestor(out, what)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name or 'out'}.{os.getpid()}.", suffix=".part", dir=anchor))
    try:
        with faults_name(out):
            yield staging
            out.mkdir(parents=True, exist_ok=True)
            files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == last)
            for src in files:
                dst = out / src.relative_to(staging)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays appear in reports; write them as plain numbers and lists.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
