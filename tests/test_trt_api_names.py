"""Static checks of the TensorRT code, which cannot run on machines without a GPU.

1. Every TensorRT attribute deploy/tensorrt/engine.py uses exists in TensorRT 10.3, 10.13 and 11.4,
   unless the use is guarded by hasattr(...) or getattr(..., default).
2. No module but deploy/tensorrt/engine.py imports tensorrt.
3. mypy passes over the TensorRT-facing modules with tensorrt-stubs (10.13) as the types of `tensorrt`.

Which attributes are "TensorRT attributes" (the rule, applied by `collect_uses`):
  an expression holds a TensorRT object when it is the name `trt`; a local or `self.x` assigned
  from such an expression (also through for/with/tuple unpacking); a parameter or attribute
  annotated with a `trt.` type; a call of such an expression; a subscript of one; or a call of a
  function whose return annotation names a `trt.` type. Every `.attr` taken on such an
  expression is a use, and so is every method a class derived from a `trt.` class defines (an
  override with a misspelt name would silently never be called). Dunder names are Python's.
  The rule over-approximates (e.g. `.attr` on a str returned by TensorRT counts), which fails
  loudly rather than letting a name through.

Annotations are not uses: the module postpones them (from __future__ import annotations), so
they are never evaluated; mypy checks them against the stubs.

A use is guarded inside the body of `if hasattr(X, "name")` (also in an `and` chain) or
`A if hasattr(X, "name") else B`, and in `getattr(X, "name", default)`.

The name lists (../shared/facts/tensorrt-api/*.names) hold every identifier-like string of 4 or
more characters in each version's compiled Python bindings. The linker merges a string into the
tail of a longer one ("Builder" lives inside "IExprBuilder"), so a name counts as present when it
is an entry or the tail of one. Absence then almost always means the version lacks the name
(not always: "DataType" is a class name 10.3 has but its list lacks, presumably merged into a
non-identifier string); presence is weaker evidence (a tail of an unrelated string), which is
why the names 11.4 removed are also checked explicitly in the guard test below. Names under 4 characters cannot be in the lists: they are
listed in SHORT_NAMES with where they come from. tests/data/trt_api_names.json holds only the
lookups this code needs; refresh it after changing the TensorRT code with
    python tests/test_trt_api_names.py --refresh ../shared/facts/tensorrt-api
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRT_MODULE = ROOT / "deploy" / "tensorrt" / "engine.py"
CHECKED = [TRT_MODULE]  # the only module that holds TensorRT objects (the others get plain values)
MYPY_MODULES = [
    "deploy/tensorrt/engine.py",
    "deploy/tensorrt/cuda.py",
    "deploy/tensorrt/build.py",
    "deploy/cli/build.py",
    "deploy/runtime/backends/trt_backend.py",
    "deploy/runtime/backends/trt_sidecar.py",
]
VERSIONS = ("10.3", "10.13", "11.4")
DATA = Path(__file__).parent / "data" / "trt_api_names.json"
MIN_LISTED_LENGTH = 4
SHORT_NAMES = {
    "DLA": "DeviceType.DLA: the DLA device type, in every TensorRT since 5.0",
    "log": "ILogger.log(severity, msg): the method a Python logger implements",
}


@dataclass(frozen=True)
class Use:
    name: str
    line: int
    guarded: bool
    kind: str  # "attribute" or "override"


def _mentions_trt(node: ast.AST | None) -> bool:
    if node is None:
        return False
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # string annotations
        return bool(re.search(r"\btrt\.", node.value))
    return any(isinstance(n, ast.Name) and n.id == "trt" for n in ast.walk(node))


def _hasattr_names(test: ast.AST) -> set[str]:
    """Names a condition proves present: hasattr(X, "n"), also inside `a and b`."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return set().union(*(_hasattr_names(v) for v in test.values))
    if (
        isinstance(test, ast.Call)
        and isinstance(test.func, ast.Name)
        and test.func.id == "hasattr"
        and len(test.args) == 2
        and isinstance(test.args[1], ast.Constant)
    ):
        return {str(test.args[1].value)}
    return set()


def _functions(tree: ast.AST) -> Iterator[tuple[ast.FunctionDef, ast.ClassDef | None]]:
    """Every function with the class it is a method of (None for plain and nested functions)."""

    def walk(node: ast.AST, cls: ast.ClassDef | None) -> Iterator[tuple[ast.FunctionDef, ast.ClassDef | None]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from walk(child, child)
            elif isinstance(child, ast.FunctionDef):
                yield child, cls
                yield from walk(child, None)
            else:
                yield from walk(child, cls)

    yield from walk(tree, None)


class _Typing:
    """Which expressions hold TensorRT objects (see the module docstring for the rule)."""

    def __init__(self, tree: ast.AST) -> None:
        self.trt_functions = {f.name for f, _ in _functions(tree) if _mentions_trt(f.returns)}
        self.self_attrs: dict[str, set[str]] = {}  # class name -> typed `self.x` names
        self.locals: dict[ast.FunctionDef, set[str]] = {}
        changed = True
        while changed:  # fixed point: locals feed self attributes and back
            changed = False
            for func, cls in _functions(tree):
                local = self._function_locals(func, cls)
                if local != self.locals.get(func):
                    self.locals[func], changed = local, True

    def typed(self, node: ast.AST, local: set[str], cls: ast.ClassDef | None) -> bool:
        if isinstance(node, ast.Name):
            return node.id == "trt" or node.id in local
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and cls is not None:
                return node.attr in self.self_attrs.get(cls.name, set())
            return self.typed(node.value, local, cls)
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in self.trt_functions:
                return True
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
                return func.attr in self.trt_functions or self.typed(func, local, cls)
            return self.typed(func, local, cls)
        if isinstance(node, ast.Subscript):
            return self.typed(node.value, local, cls)
        return False

    def _bind(self, target: ast.AST, local: set[str], cls: ast.ClassDef | None) -> bool:
        """Mark an assignment target typed: a name, `self.x`, or each element of a tuple/list/starred."""
        if isinstance(target, ast.Tuple | ast.List):
            return any([self._bind(t, local, cls) for t in target.elts])
        if isinstance(target, ast.Starred):
            return self._bind(target.value, local, cls)
        if isinstance(target, ast.Name) and target.id not in local:
            local.add(target.id)
            return True
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self" and cls:
            attrs = self.self_attrs.setdefault(cls.name, set())
            if target.attr not in attrs:
                attrs.add(target.attr)
                return True
        return False

    def _function_locals(self, func: ast.FunctionDef, cls: ast.ClassDef | None) -> set[str]:
        args = func.args
        local = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs] if _mentions_trt(a.annotation)}
        changed = True
        while changed:
            changed = False
            for node in ast.walk(func):
                if isinstance(node, ast.Assign) and self.typed(node.value, local, cls):
                    changed |= any(self._bind(t, local, cls) for t in node.targets)
                elif isinstance(node, ast.AnnAssign) and (
                    _mentions_trt(node.annotation) or (node.value is not None and self.typed(node.value, local, cls))
                ):
                    changed |= self._bind(node.target, local, cls)
                elif isinstance(node, ast.For | ast.comprehension) and self.typed(node.iter, local, cls):
                    changed |= self._bind(node.target, local, cls)
                elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                    if self.typed(node.context_expr, local, cls):
                        changed |= self._bind(node.optional_vars, local, cls)
        return local


class _UseCollector(ast.NodeVisitor):
    def __init__(self, typing: _Typing) -> None:
        self.typing = typing
        self.uses: list[Use] = []
        self.guards: list[set[str]] = []
        self.local: set[str] = set()
        self.cls: ast.ClassDef | None = None

    def _guarded(self, name: str) -> bool:
        return any(name in g for g in self.guards)

    def _record(self, name: str, line: int, kind: str, guarded: bool = False) -> None:
        if not (name.startswith("__") and name.endswith("__")):
            self.uses.append(Use(name, line, guarded or self._guarded(name), kind))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if any(self.typing.typed(b, self.local, self.cls) for b in node.bases):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    self._record(item.name, item.lineno, "override")
        outer, self.cls = self.cls, node
        self.generic_visit(node)
        self.cls = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer_local, outer_cls = self.local, self.cls
        self.local = self.typing.locals.get(node, set())
        # A method's `self` belongs to its class; a function nested in a method is no method.
        self.cls = outer_cls if outer_cls is not None and node in outer_cls.body else None
        # Annotations are skipped: never evaluated (postponed), they are mypy's to check against the stubs.
        for expr in [*node.decorator_list, *node.args.defaults, *filter(None, node.args.kw_defaults)]:
            self.visit(expr)
        for stmt in node.body:
            self.visit(stmt)
        self.local, self.cls = outer_local, outer_cls

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self.guards.append(_hasattr_names(node.test))
        for stmt in node.body:
            self.visit(stmt)
        self.guards.pop()
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        self.guards.append(_hasattr_names(node.test))
        self.visit(node.body)
        self.guards.pop()
        self.visit(node.orelse)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self.typing.typed(node.value, self.local, self.cls):
            self._record(node.attr, node.lineno, "attribute")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (
            isinstance(func, ast.Name)
            and func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and self.typing.typed(node.args[0], self.local, self.cls)
        ):
            name = str(node.args[1].value)
            if func.id == "getattr":  # hasattr is the guard itself, not a use
                self._record(name, node.lineno, "attribute", guarded=len(node.args) == 3)
        self.generic_visit(node)


def collect_uses(source: str) -> list[Use]:
    tree = ast.parse(source)
    collector = _UseCollector(_Typing(tree))
    collector.visit(tree)
    return collector.uses


def _module_uses() -> list[Use]:
    return [u for path in CHECKED for u in collect_uses(path.read_text())]


def _names_data() -> dict[str, dict[str, str | None]]:
    return json.loads(DATA.read_text())["versions"]


def _present(name: str, version: str, data: dict[str, dict[str, str | None]]) -> bool | None:
    """True/False from the lists; None when the name was never looked up (refresh the data)."""
    table = data[version]
    if name not in table:
        return None
    return table[name] is not None


# ---------------------------------------------------------------------------------------- tests
def test_every_trt_attribute_exists_in_all_supported_versions() -> None:
    data = _names_data()
    problems = []
    for use in _module_uses():
        if use.guarded:
            continue
        if len(use.name) < MIN_LISTED_LENGTH:
            if use.name not in SHORT_NAMES:
                problems.append(f"line {use.line}: {use.name!r} is too short for the lists; add it to SHORT_NAMES with its source")
            continue
        for version in VERSIONS:
            present = _present(use.name, version, data)
            if present is None:
                problems.append(f"line {use.line}: {use.name!r} not looked up yet; refresh {DATA.name} (see the docstring)")
                break
            if not present:
                problems.append(f"line {use.line}: {use.name!r} does not exist in TensorRT {version}; guard it with hasattr")
    assert not problems, "\n".join(problems)


def test_annotations_are_postponed() -> None:
    """The use check skips annotations; that is only sound while they are never evaluated."""
    tree = ast.parse(TRT_MODULE.read_text())
    assert any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and n.names[0].name == "annotations"
               for n in tree.body)


def test_rule_sees_the_tensorrt_calls() -> None:
    """The typing rule is not vacuous: the calls the build and the runtime rest on are all collected."""
    seen = {u.name for u in _module_uses()}
    expected = {
        "OnnxParser", "parse_from_file", "num_errors", "get_error", "STRONGLY_TYPED", "create_network",
        "set_memory_pool_limit", "WORKSPACE", "create_optimization_profile", "set_shape", "add_optimization_profile",
        "create_timing_cache", "set_timing_cache", "builder_optimization_level", "DLA_core", "GPU_FALLBACK",
        "VERSION_COMPATIBLE", "get_plugin_registry", "load_library", "build_serialized_network",
        "profiling_verbosity", "DETAILED", "create_engine_inspector", "get_engine_information", "JSON",
        "deserialize_cuda_engine", "engine_host_code_allowed", "num_io_tensors", "get_tensor_name",
        "get_tensor_mode", "get_tensor_shape", "get_tensor_dtype", "get_tensor_profile_shape",
        "create_execution_context", "set_optimization_profile_async", "set_input_shape", "set_tensor_address",
        "execute_async_v3", "profiler", "report_layer_time", "log",
    }
    assert expected <= seen, sorted(expected - seen)


def test_removed_api_is_only_used_behind_guards() -> None:
    """Names 11.4 dropped (facts/tensorrt.md) appear, if at all, only guarded; and the guard logic works."""
    data = _names_data()
    for name in ("FP16", "ADJUST_FOR_DLA"):
        assert not all(_present(name, v, data) for v in VERSIONS), f"{name} should be missing from some version"
    assert all(u.guarded for u in _module_uses() if u.name in {"FP16", "INT8", "ADJUST_FOR_DLA", "load_library", "__version__"})
    uses = collect_uses(
        "def f(config):\n"
        "    import tensorrt as trt\n"
        "    config.set_flag(trt.BuilderFlag.FP16)\n"
        "    if hasattr(trt.BuilderFlag, 'INT8') and config:\n"
        "        config.set_flag(trt.BuilderFlag.INT8)\n"
        "    x = getattr(trt, 'nptype', None)\n"
        "    y = getattr(trt, 'volume')\n"
    )
    by_name = {u.name: u.guarded for u in uses}
    assert by_name == {"BuilderFlag": False, "FP16": False, "INT8": True, "nptype": True, "volume": False}
    assert [u.guarded for u in uses if u.name == "BuilderFlag"] == [False, False, False]


def test_typed_locals_and_overrides_are_followed() -> None:
    uses = collect_uses(
        "from __future__ import annotations\n"
        "def make() -> trt.ICudaEngine: ...\n"
        "def g(ctx: trt.IExecutionContext, n: int) -> None:\n"
        "    import tensorrt as trt\n"
        "    engine = make()\n"
        "    for d in engine.get_tensor_profile_shape('x', 0):\n"
        "        d.foo\n"
        "    ctx.bar(n.bit_length())\n"
        "    class P(trt.IProfiler):\n"
        "        def report_layer_times(self, name, ms):\n"
        "            self.total = ms\n"
    )
    names = {u.name for u in uses}
    assert {"get_tensor_profile_shape", "foo", "bar", "IProfiler", "report_layer_times"} <= names
    assert not names & {"bit_length", "total", "ICudaEngine", "IExecutionContext"}  # ints, own attrs, annotations


def _imports_tensorrt(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tensorrt" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tensorrt":
            return True
        if (  # importlib.import_module("tensorrt") / __import__("tensorrt")
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).split(".")[0] == "tensorrt"
            and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "__import__")
        ):
            return True
    return False


def test_only_trt_engine_imports_tensorrt() -> None:
    offenders = []
    for folder in ("deploy", "calib", "plugins", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != TRT_MODULE and _imports_tensorrt(ast.parse(path.read_text(), str(path))):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"only deploy/tensorrt/engine.py may import tensorrt: {offenders}"
    assert _imports_tensorrt(ast.parse(TRT_MODULE.read_text()))


# ---------------------------------------------------------------------------------------- mypy
def _split_params(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _repair_stub_line(line: str) -> str:
    """Undo two pybind11-stubgen slips in tensorrt-stubs 10.13 that make the file unparseable:
    a parameter named `in` (a keyword) and a parameter without default after one with a default."""
    line = re.sub(r"\bin: ", "in_: ", line)
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if match:
        params, seen_default = [], False
        for param in _split_params(match.group(2)):
            if "=" in param:
                seen_default = True
            elif seen_default and ":" in param and not param.strip().startswith("*"):
                param += " = ..."
            params.append(param)
        line = match.group(1) + ",".join(params) + match.group(3)
    return line


def _stub_root() -> Path | None:
    for entry in map(Path, sys.path):
        if (entry / "tensorrt_bindings" / "tensorrt.pyi").is_file() and (entry / "tensorrt" / "__init__.pyi").is_file():
            return entry
    return None


def _copy_stubs(dest: Path) -> None:
    """tensorrt-stubs ships .pyi files without py.typed, so mypy skips them in site-packages;
    a copy on mypy_path is used, after repairing the lines that do not parse."""
    root = _stub_root()
    assert root is not None
    for package in ("tensorrt", "tensorrt_bindings"):
        for stub in (root / package).glob("*.pyi"):
            (dest / package).mkdir(parents=True, exist_ok=True)
            shutil.copy(stub, dest / package / stub.name)
    stub = dest / "tensorrt_bindings" / "tensorrt.pyi"
    lines = stub.read_text().splitlines()
    for _ in range(100):
        try:
            ast.parse("\n".join(lines))
            break
        except SyntaxError as exc:
            assert exc.lineno is not None
            repaired = _repair_stub_line(lines[exc.lineno - 1])
            assert repaired != lines[exc.lineno - 1], f"cannot repair stub line {exc.lineno}: {exc.msg}"
            lines[exc.lineno - 1] = repaired
    stub.write_text("\n".join(lines) + "\n")


def test_mypy_with_tensorrt_stubs(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e .[dev])")
    if _stub_root() is None:
        pytest.skip("tensorrt-stubs is not installed (pip install tensorrt-stubs)")
    stubs = tmp_path / "stubs"
    _copy_stubs(stubs)
    canary = tmp_path / "canary.py"
    canary.write_text("import tensorrt as trt\nreveal_type(trt.Builder)\n")
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\npython_version = 3.11\nfollow_imports = silent\nignore_missing_imports = True\n"
        f"mypy_path = {stubs}\ncheck_untyped_defs = True\ndisallow_untyped_defs = True\nwarn_unused_ignores = True\n"
        # The stubs' own bodies have errors (a module variable named `bool`, ...); only our code is judged.
        "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\nignore_errors = True\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
         str(canary), *MYPY_MODULES],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    out = result.stdout + result.stderr
    # The canary proves mypy typed `tensorrt` from the stubs instead of treating it as Any.
    assert "tensorrt_bindings.tensorrt.Builder" in out, out
    problems = [line for line in out.splitlines() if ": error:" in line]
    assert not problems and result.returncode == 0, out


# ---------------------------------------------------------------------------------------- data refresh
def refresh(lists_dir: Path) -> None:
    """Rewrite tests/data/trt_api_names.json with the lookups the code needs, from the full lists."""
    uses = {u.name for u in _module_uses() if len(u.name) >= MIN_LISTED_LENGTH}
    uses |= {"FP16", "ADJUST_FOR_DLA"}  # looked up by test_removed_api_is_only_used_behind_guards
    versions: dict[str, dict[str, str | None]] = {}
    for version in VERSIONS:
        entries = set((lists_dir / f"tensorrt-{version}.names").read_text().split())
        table: dict[str, str | None] = {}
        for name in sorted(uses):
            tails = sorted((e for e in entries if e.endswith(name)), key=len)
            table[name] = name if name in entries else (tails[0] if tails else None)
        versions[version] = table
    DATA.write_text(json.dumps({
        "source": "../shared/facts/tensorrt-api/tensorrt-{version}.names (compiled Python bindings' strings)",
        "meaning": "name -> the list entry it was found as (itself, or a longer entry it is the tail of); null: absent",
        "versions": versions,
    }, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--refresh":
        refresh(Path(sys.argv[2]))
        print(f"wrote {DATA}")
    else:
        sys.exit("usage: python tests/test_trt_api_names.py --refresh DIR_WITH_tensorrt-*.names")
