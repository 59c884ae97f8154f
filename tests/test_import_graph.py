"""The import graph (docs/architecture.md): each folder of the package imports only the layers beneath it.

Every module's imports (module level, inside functions, under TYPE_CHECKING; `importlib.import_module`
and `__import__` of a constant name too) are read with ast and mapped to a layer: the folder under
deploy/ (retinanet_trt.<folder>), calib/, plugins/, or "plumbing" for the modules at the top of
deploy/. BENEATH says which layers each stands on; a layer may import those and everything they
stand on (the closure). The table has no cycles (checked), so it is a layering. EXCEPTIONS lists
the few imports that go up: each must be inside a function (a lazy dispatch, never module level)
and still be needed, so the table stays the code's. A new folder fails until it is given a row.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"deploy": "retinanet_trt", "calib": "retinanet_trt.calib", "plugins": "retinanet_trt.plugins"}

# Each layer and the layers directly beneath it, lowest first (derived from the code).
BENEATH: dict[str, set[str]] = {
    "plumbing": set(),
    "spec": {"plumbing"},
    "tensorrt": {"spec"},
    "runtime": {"tensorrt"},
    "scoring": {"runtime"},
    "model": {"runtime"},
    "plugins": {"runtime"},
    "importers": {"model"},
    "export": {"model"},
    "demo": {"model"},
    "calib": {"scoring", "export", "demo"},
    "bench": {"scoring", "export"},
    "serve": {"bench", "plugins"},
    "cli": {"calib", "bench", "serve", "importers"},
}

# Modules that count as another layer than their folder's.
MODULE_LAYERS = {
    # `python -m retinanet_trt.plugins` is a command: a CLI shell over plugins/, like the trt-* ones.
    "retinanet_trt.plugins.__main__": "cli",
}

# Imports that go up, each inside a function: (importing module, imported module) -> why.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("retinanet_trt", "retinanet_trt.runtime.detector"):
        "the package's one public name (`from retinanet_trt import Detector`), loaded on first use",
    ("retinanet_trt.versions", "retinanet_trt.tensorrt.engine"):
        "environment() reports the TensorRT version beside the package versions (bench reports)",
    ("retinanet_trt.versions", "retinanet_trt.tensorrt.cuda"):
        "environment() reports the GPU beside the package versions (bench reports)",
    ("retinanet_trt.tensorrt.engine", "retinanet_trt.plugins.library"):
        "plugin libraries are dlopen-ed before a graph naming their layers is parsed; library.py needs only plumbing",
    ("retinanet_trt.runtime.detector", "retinanet_trt.model"):
        "Detector.load of a checkpoint or 'demo': the torch backend, imported only when asked for",
    ("retinanet_trt.runtime.detector", "retinanet_trt.model.torch_backend"):
        "Detector.load of a checkpoint or 'demo': the torch backend, imported only when asked for",
    ("retinanet_trt.runtime.detector", "retinanet_trt.importers"):
        "Detector.load of a framework checkpoint: its importer, with the torch backend",
    ("retinanet_trt.runtime.detector", "retinanet_trt.demo"):
        "Detector.load('demo'): the bundled checkpoint, with the torch backend",
    ("retinanet_trt.runtime.detector", "retinanet_trt.plugins.end2end"):
        "Detector.decode of an end-to-end graph's outputs (decode + NMS ran in the graph)",
}

# Top-level external packages and the only layers that may import them.
EXTERNAL = {"tensorrt": {"tensorrt"}, "cuda": {"tensorrt"}}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module name imported
    line: int
    in_function: bool
    path: str


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    base = PACKAGE_DIRS[rel.parts[0]]
    return ".".join([base, *(p for p in rel.parts[1:] if p != "__init__")])


def package_files(root: Path) -> list[Path]:
    """Every .py file of the package (symlinked folders skipped: calib/ and plugins/ are walked once)."""
    files = []
    for folder in PACKAGE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            if not any(p.is_symlink() for p in [path, *path.parents] if root in p.parents):
                files.append(path)
    return files


def _is_module(root: Path, name: str) -> bool:
    """Whether a dotted retinanet_trt name is a module or package in the tree (not an attribute)."""
    parts = name.split(".")
    for folder, base in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[1])):
        bparts = base.split(".")
        if parts[: len(bparts)] == bparts:
            where = root.joinpath(folder, *parts[len(bparts):])
            return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()
    return False


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
    return False


def collect_imports(root: Path, files: list[Path] | None = None) -> list[Import]:
    found = []
    for path in files if files is not None else package_files(root):
        importer = module_name(root, path)
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = importer if is_pkg else importer.rsplit(".", 1)[0]
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if _is_module(root, f"{module}.{a.name}") else module
                           for a in node.names]
            elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)
                  and (getattr(node.func, "attr", None) == "import_module"
                       or getattr(node.func, "id", None) == "__import__")):
                targets = [node.args[0].value]
            for target in dict.fromkeys(targets):
                found.append(Import(importer, target, node.lineno, _in_function(node, parents),
                                    str(path.relative_to(root))))
    return found


def layer_of(root: Path, module: str) -> str | None:
    """The layer of a retinanet_trt module; None for anything outside the package."""
    if module in MODULE_LAYERS:
        return MODULE_LAYERS[module]
    parts = module.split(".")
    if parts[0] != "retinanet_trt":
        return None
    if len(parts) >= 2 and parts[1] in ("calib", "plugins"):
        return parts[1]
    if len(parts) == 1 or not (root / "deploy" / parts[1]).is_dir():
        return "plumbing"  # the package's __init__ and the modules at the top of deploy/
    return parts[1]


def allowed(layer: str, beneath: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(beneath[layer])
    while todo:
        x = todo.pop()
        if x not in seen:
            seen.add(x)
            todo += beneath[x]
    return seen


def violations(root: Path, imports: list[Import], beneath: dict[str, set[str]] = BENEATH,
               exceptions: dict[tuple[str, str], str] = EXCEPTIONS) -> list[str]:
    problems = []
    for imp in imports:
        src = layer_of(root, imp.importer)
        top = imp.target.split(".")[0]
        where = f"{imp.path}:{imp.line}"
        if src not in beneath:
            problems.append(f"{where}: {imp.importer} is in folder {src!r}, which the layer table lacks: give it a row")
            continue
        if top in EXTERNAL:
            if src not in EXTERNAL[top]:
                problems.append(f"{where}: {imp.importer} ({src}) imports {top}; only {sorted(EXTERNAL[top])} may")
            continue
        dst = layer_of(root, imp.target)
        if dst is None or dst == src:
            continue
        if dst not in beneath:
            problems.append(f"{where}: {imp.importer} imports {imp.target}, whose folder {dst!r} has no row")
            continue
        if dst in allowed(src, beneath):
            continue
        key = (imp.importer, imp.target)
        if key in exceptions and imp.in_function:
            continue
        if key in exceptions:
            problems.append(f"{where}: {imp.importer} imports {imp.target} at module level; the exception "
                            "holds only inside a function")
            continue
        problems.append(f"{where}: {imp.importer} ({src}) imports {imp.target} ({dst}), a layer above it; "
                        f"{src} may import {sorted(allowed(src, beneath))}")
    return problems


def test_the_table_is_a_layering() -> None:
    """No cycles: a layer never stands (directly or through others) on itself."""
    assert set().union(*BENEATH.values()) <= set(BENEATH)
    for layer in BENEATH:
        assert layer not in allowed(layer, BENEATH), f"{layer} stands on itself through {sorted(allowed(layer, BENEATH))}"
    order = list(BENEATH)
    for layer, below in BENEATH.items():  # listed lowest first, so the table reads bottom-up
        assert all(order.index(b) < order.index(layer) for b in below), layer


def test_every_folder_has_a_layer() -> None:
    folders = {p.name for p in (ROOT / "deploy").iterdir() if (p / "__init__.py").is_file() and not p.is_symlink()}
    assert folders | {"calib", "plugins", "plumbing"} == set(BENEATH), "give each folder a row in BENEATH"


def test_each_folder_imports_only_the_layers_beneath_it() -> None:
    imports = collect_imports(ROOT)
    assert len(imports) > 300 and any(i.in_function for i in imports)  # the walk saw the package
    problems = violations(ROOT, imports)
    assert not problems, "\n".join(problems)


def test_every_exception_is_still_needed() -> None:
    imports = collect_imports(ROOT)
    used = {(i.importer, i.target) for i in imports}
    stale = [k for k in EXCEPTIONS if k not in used]
    assert not stale, f"remove these exceptions, no such import any more: {stale}"
    needed = [k for k in EXCEPTIONS
              if layer_of(ROOT, k[1]) in allowed(layer_of(ROOT, k[0]) or "", BENEATH)]
    assert not needed, f"these imports go down, no exception needed: {needed}"


def test_only_tensorrt_imports_tensorrt_and_cuda() -> None:
    imports = collect_imports(ROOT)
    holders = {(i.target.split(".")[0], layer_of(ROOT, i.importer)) for i in imports
               if i.target.split(".")[0] in EXTERNAL}
    assert holders == {("tensorrt", "tensorrt"), ("cuda", "tensorrt")}, holders
    for path in sorted((ROOT / "benchmarks").glob("*.py")):  # scripts above the package, same rule
        tree = ast.parse(path.read_text(), str(path))
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not names & set(EXTERNAL), f"{path.name} imports {sorted(names & set(EXTERNAL))}: go through tensorrt/"


def test_each_folder_opens_with_what_it_takes_gives_and_may_import() -> None:
    for layer, below in BENEATH.items():
        if layer == "plumbing":
            continue
        init = ROOT / ("deploy" if layer not in ("calib", "plugins") else "") / layer / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        first = doc.split("\n\n")[0]
        assert "Takes" in first and "gives" in first and "May import" in first, f"{init}: {first[:200]!r}"
        for b in below:
            assert (b if b == "plumbing" else f"{b}/") in first, f"{init}'s first paragraph should name {b}"


def test_the_architecture_page_names_every_folder() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [layer for layer in BENEATH if layer != "plumbing" and f"`{layer}/`" not in text]
    assert not missing, f"docs/architecture.md lacks {missing}"


# ------------------------------------------------------------------------------ the check itself
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"deploy/__init__.py": "", "deploy/errors.py": "", "deploy/spec/__init__.py": "",
                      "deploy/runtime/__init__.py": "", "deploy/cli/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


SMALL = {"plumbing": set(), "spec": {"plumbing"}, "runtime": {"spec"}, "cli": {"runtime"}}


@pytest.mark.parametrize(("files", "expected"), [
    # module level, up one layer
    ({"deploy/spec/x.py": "from retinanet_trt.runtime import detector\n"}, "(spec) imports retinanet_trt.runtime"),
    # inside a function: still a violation without an exception
    ({"deploy/spec/x.py": "def f():\n    import retinanet_trt.cli.main\n", "deploy/cli/main.py": ""},
     "(spec) imports retinanet_trt.cli.main (cli)"),
    # the plumbing importing a stage, through the package itself
    ({"deploy/errors.py": "from retinanet_trt import spec\n"}, "(plumbing) imports retinanet_trt.spec (spec)"),
    # relative imports resolve like absolute ones
    ({"deploy/runtime/x.py": "from ..cli import main\n", "deploy/cli/main.py": ""},
     "(runtime) imports retinanet_trt.cli.main (cli)"),
    # an external package outside its layer
    ({"deploy/runtime/x.py": "def f():\n    import tensorrt as trt\n"}, "imports tensorrt; only ['tensorrt'] may"),
    # a new folder without a row
    ({"deploy/extra/__init__.py": "", "deploy/cli/x.py": "import retinanet_trt.extra\n"}, "has no row"),
])
def test_a_synthetic_violation_is_caught(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    root = _tree(tmp_path, files)
    problems = violations(root, collect_imports(root), SMALL, {})
    assert len(problems) == 1 and expected in problems[0], problems


def test_allowed_imports_and_exceptions_pass(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "deploy/cli/x.py": "from retinanet_trt.spec import ModelSpec\nfrom retinanet_trt import errors\n",  # 2 down
        "deploy/spec/y.py": "def f():\n    from retinanet_trt.cli import x\n",  # up, but an exception
        "deploy/spec/z.py": "from retinanet_trt.cli import x\n",  # the same exception, at module level
    })
    exceptions = {("retinanet_trt.spec.y", "retinanet_trt.cli.x"): "test", ("retinanet_trt.spec.z", "retinanet_trt.cli.x"): "t"}
    problems = violations(root, collect_imports(root), SMALL, exceptions)
    assert len(problems) == 1 and "retinanet_trt.spec.z imports retinanet_trt.cli.x at module level" in problems[0], problems


def test_a_cycle_in_the_table_is_caught() -> None:
    assert "spec" in allowed("spec", {**SMALL, "plumbing": {"spec"}})
