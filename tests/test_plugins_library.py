"""Plugin library loading (plugins/library.py): clear errors for every way a path can be wrong."""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from retinanet_trt.errors import UsageError
from retinanet_trt.plugins.library import load_plugin_libraries, loaded_plugin_libraries

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build test libraries")


def _compile(tmp: Path, name: str, source: str, *flags: str) -> Path:
    c = tmp / f"{name}.c"
    c.write_text(source)
    out = tmp / f"lib{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out), str(c), *flags], check=True, capture_output=True)
    return out


def test_missing_file_folder_and_non_library(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_plugin_libraries([tmp_path / "libnone.so"])
    with pytest.raises(UsageError, match="is a folder"):
        load_plugin_libraries([tmp_path])
    text = tmp_path / "plugin.so"
    text.write_text("not a library")
    with pytest.raises(UsageError, match="not a shared library"):
        load_plugin_libraries([text])


@pytest.mark.skipif(ctypes.util.find_library("m") is None, reason="no libm to load")
def test_a_real_library_loads_once(tmp_path: Path) -> None:
    libm = next(p for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib",
                            "/usr/lib", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")
                if (p := Path(d) / "libm.so.6").exists())
    link = tmp_path / "libm_link.so"
    os.symlink(libm, link)
    first, again = load_plugin_libraries([libm, link])
    assert first is again  # the symlink resolves to the same file: loaded once
    assert os.path.realpath(libm) in loaded_plugin_libraries()


@needs_cc
def test_missing_dependency_and_undefined_symbol_are_explained(tmp_path: Path) -> None:
    dep = _compile(tmp_path, "dep", "int dep_value(void) { return 7; }\n")
    plugin = _compile(tmp_path, "needsdep", "int dep_value(void);\nint value(void) { return dep_value(); }\n",
                      f"-L{tmp_path}", "-ldep")
    dep.unlink()
    with pytest.raises(UsageError, match="LD_LIBRARY_PATH"):
        load_plugin_libraries([plugin])
    unresolved = _compile(tmp_path, "unresolved", "int missing_symbol(void);\nint value(void) { return missing_symbol(); }\n")
    with pytest.raises(UsageError, match="rebuild it against this TensorRT"):
        load_plugin_libraries([unresolved])
