"""A runtime install without ONNX Runtime, TensorRT or cuda-python answers in one line (issue 17, part 5).

The real command entry points run in a fresh interpreter where a meta path finder makes the
package unimportable, as on a `pip install .` without the `cpu` / `gpu` extras: exit status 2,
one stderr line that names the install, no traceback. A static check keeps every import of
those packages on the runtime path inside `with requires(...)` (deploy/optional.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from retinanet_trt.errors import UsageError
from retinanet_trt.optional import PACKAGES, MissingPackage, requires

ROOT = Path(__file__).resolve().parents[1]
CPU_HINT = "pip install 'retinanet-trt[cpu]'"
GPU_HINT = "'retinanet-trt[gpu]'"
TRT_HINT = "pip install tensorrt"

# Runs in the child: argv[1] = blocked top-level modules (comma-separated), argv[2] = "fake-trt"
# to stand in a TensorRT that imports (so the cuda-python check is reached), argv[3] = the
# command module, the rest its arguments.
_CHILD = textwrap.dedent("""
    import importlib, importlib.abc, sys, types

    blocked = set(filter(None, sys.argv[1].split(",")))

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    if sys.argv[2] == "fake-trt":
        sys.modules["tensorrt"] = types.SimpleNamespace(Builder=object, __version__="10.13.0.35")
    main = importlib.import_module(f"retinanet_trt.cli.{sys.argv[3]}").main
    code = main(sys.argv[4:])
    assert not blocked & {m.split(".")[0] for m in sys.modules}, "a blocked module was imported"
    sys.exit(code)
""")


def _run(blocked: str, command: str, args: list[str], fake_trt: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CHILD, blocked, "fake-trt" if fake_trt else "-", command, *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """demo.onnx from `trt-export --demo`, an image, and an engine file (with --onnx it needs no sidecar)."""
    from retinanet_trt.cli.export import main as export_main

    folder = tmp_path_factory.mktemp("missing_backend")
    onnx_path = folder / "demo.onnx"
    assert export_main(["--demo", "-o", str(onnx_path), "--quiet"]) == 0
    image = folder / "x.png"
    Image.new("RGB", (96, 64), (120, 30, 200)).save(image)
    engine = folder / "m.engine"
    engine.write_bytes(b"\0" * 64)
    return {"onnx": str(onnx_path), "image": str(image), "engine": str(engine), "out": str(folder / "out")}


CASES = [
    # (blocked, fake TensorRT, command, args, prog, what the line must name)
    ("onnxruntime", False, "infer", ["{onnx}", "{image}", "-o", "{out}"], "trt-infer", [CPU_HINT, GPU_HINT]),
    ("onnxruntime", False, "infer", ["{onnx}", "{image}", "-o", "{out}", "--backend", "ort-cuda"], "trt-infer",
     [GPU_HINT, "onnxruntime-gpu"]),
    ("onnxruntime", False, "eval", ["{onnx}", "--demo", "--demo-images", "2"], "trt-eval", [CPU_HINT]),
    ("onnxruntime", False, "bench", ["{onnx}"], "trt-bench", [CPU_HINT]),
    ("onnxruntime", False, "calib", ["{onnx}", "--int8", "--calib", "demo", "-o", "{out}.int8.onnx"], "trt-calib",
     [CPU_HINT]),
    ("onnxruntime", False, "export", ["--demo", "-o", "{out}.onnx", "--quiet"], "trt-export", [CPU_HINT]),
    ("tensorrt", False, "infer", ["{engine}", "{image}", "--onnx", "{onnx}", "-o", "{out}"], "trt-infer", [TRT_HINT]),
    ("tensorrt", False, "eval", ["{engine}", "--onnx", "{onnx}", "--demo", "--demo-images", "2"], "trt-eval",
     [TRT_HINT]),
    ("tensorrt", False, "bench", ["{engine}"], "trt-bench", [TRT_HINT]),
    ("tensorrt", False, "build", ["{onnx}", "-o", "{out}.engine"], "trt-build", [TRT_HINT]),
    ("cuda", True, "infer", ["{engine}", "{image}", "--onnx", "{onnx}", "-o", "{out}"], "trt-infer",
     ["cuda-python", GPU_HINT]),
]


@pytest.mark.parametrize(("blocked", "fake_trt", "command", "args", "prog", "names"), CASES,
                         ids=[f"{c[2]}-{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_missing_package_is_one_line_and_exit_2(demo_files: dict[str, str], blocked: str, fake_trt: bool,
                                                command: str, args: list[str], prog: str, names: list[str]) -> None:
    proc = _run(blocked, command, [a.format(**demo_files) for a in args], fake_trt)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith(f"{prog}:"), lines
    assert all(n in lines[0] for n in names), lines[0]
    assert not Path(demo_files["out"]).exists()  # nothing written


_LOAD = textwrap.dedent("""
    import importlib.abc, sys

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "onnxruntime":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    from retinanet_trt import Detector
    from retinanet_trt.errors import UsageError
    try:
        Detector.load(sys.argv[1])
    except UsageError as exc:
        assert isinstance(exc, ImportError)  # code that probes with `except ImportError` still works
        print(exc)
        sys.exit(0)
    sys.exit("Detector.load did not raise")
""")


def test_detector_load_raises_one_line_usage_error(demo_files: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-c", _LOAD, demo_files["onnx"]], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "ONNX Runtime" in lines[0] and CPU_HINT in lines[0], lines


# ------------------------------------------------------------------------------ the helper itself
def test_requires_names_feature_and_install() -> None:
    with pytest.raises(MissingPackage) as info, requires("onnxruntime", "backend ort-cpu"):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
    assert str(info.value) == ("backend ort-cpu needs ONNX Runtime, which is not installed here: "
                               "pip install 'retinanet-trt[cpu]', or 'retinanet-trt[gpu]' on a GPU host")
    assert isinstance(info.value, UsageError) and isinstance(info.value, ImportError)
    assert info.value.package == "onnxruntime" and info.value.__cause__ is None


@pytest.mark.parametrize("error", [
    ModuleNotFoundError("No module named 'flatbuffers'", name="flatbuffers"),  # a dependency of it is missing
    OSError("libnvinfer.so.10: cannot open shared object file"),  # the wheel is there, its library is not
    ImportError("DLL load failed\nsecond line"),
])
def test_requires_quotes_a_broken_install_in_one_line(error: Exception) -> None:
    with pytest.raises(MissingPackage) as info, requires("tensorrt"):
        raise error
    text = str(info.value)
    assert "\n" not in text and "does not import" in text and str(error).splitlines()[0] in text
    assert TRT_HINT in text


def test_requires_leaves_other_errors_and_unknown_packages() -> None:
    with pytest.raises(ValueError, match="no install hint"), requires("torchvision"):
        pass
    with pytest.raises(KeyError), requires("cuda"):
        raise KeyError("not an import problem")


# ------------------------------------------------------------------------------ every import routed
RUNTIME_MODULES = [*sorted((ROOT / "deploy" / "runtime" / "backends").glob("*.py")),
                   ROOT / "deploy" / "tensorrt" / "engine.py", ROOT / "deploy" / "tensorrt" / "cuda.py"]


def _unrouted_imports(path: Path) -> list[str]:
    """Imports of PACKAGES' modules that are neither under `if TYPE_CHECKING:` nor in `with requires(...)`."""
    tree = ast.parse(path.read_text(), str(path))
    parents: dict[ast.AST, ast.AST] = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def guarded(node: ast.AST) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                return True
            if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call) and ast.unparse(item.context_expr.func) == "requires"
                for item in node.items
            ):
                return True
        return False

    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module or ""]
        else:
            continue
        if any(m.split(".")[0] in PACKAGES for m in modules) and not guarded(node):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return bad


def test_every_runtime_import_of_an_optional_package_goes_through_requires() -> None:
    assert len(RUNTIME_MODULES) >= 5
    offenders = [line for path in RUNTIME_MODULES for line in _unrouted_imports(path)]
    assert not offenders, f"import these inside `with requires(...)` (deploy/optional.py): {offenders}"
    probe = ROOT / "deploy" / "runtime" / "backends" / "ort_backend.py"
    assert "with requires(" in probe.read_text()  # the check sees what it is meant to see
