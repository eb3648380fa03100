"""The shape of the package, checked on every run: the rules of the developers' guide.

The import graph is built from the source with :mod:`ast`, every import counted
(inside functions too, where the heavy ones live), except those under
``if TYPE_CHECKING:``, which never run. Then:

- no import cycle between modules;
- ``io/``, ``sources/`` and ``analysis/`` never import ``render/``, ``pipelines/`` or ``cli/``;
- no module imports another module's private (``_name``) name;
- no module is over 700 lines and no function over 80.

A new module passes these or is split before it lands. Run this file as a script
(``python tests/test_house.py``) to list what breaks the rules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "blackholes"
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80
LOWER = ("io", "sources", "analysis")  # the layers that read and compute ...
UPPER = ("render", "pipelines", "cli")  # ... never import the ones that present and orchestrate

def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST):
    """Every Import / ImportFrom node that can run (TYPE_CHECKING blocks skipped)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _absolute(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every runtime import of the package's own."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "blackholes"]
            continue
        base = _absolute(node, name, path.name == "__init__.py")
        if base.split(".")[0] != "blackholes":
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.append((sub, None) if sub in known else (base, alias.name))
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {}
    for name, path in known.items():
        edges[name] = {target for target, _ in imports_of(name, path, known) if target in known and target != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return [f"{a} -> {b}" for a in sorted(edges) for b in sorted(edges[a])
            if _layer(a) in LOWER and _layer(b) in UPPER]


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def private_imports() -> list[str]:
    known = modules()
    bad = []
    for name, path in known.items():
        for target, taken in imports_of(name, path, known):
            if taken and taken.startswith("_") and not taken.startswith("__") and target != name:
                bad.append(f"{name} imports {target}.{taken}")
    return bad


def long_modules() -> list[str]:
    bad = []
    for path in modules().values():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            bad.append(f"{_relative(path)}: {lines} lines")
    return bad


def long_functions() -> list[str]:
    bad = []
    for path in modules().values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    bad.append(f"{_relative(path)}:{node.lineno} {node.name}: {lines} lines")
    return bad


# ---------------------------------------------------------------------------- the rules


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking(tmp_path):
    """The checker itself: a function-level import is an arrow, a TYPE_CHECKING one is not."""
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from blackholes.render.text import table\n"
              "def f():\n    from blackholes.pipelines.census import census\n"
              "    from blackholes.io.dtypes import _private\n")
    path = tmp_path / "m.py"
    path.write_text(source)
    known = {"blackholes.pipelines.census": None, "blackholes.render.text": None, "blackholes.io.dtypes": None}
    assert sorted(imports_of("blackholes.analysis.m", path, known)) == [
        ("blackholes.io.dtypes", "_private"), ("blackholes.pipelines.census", "census")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_reading_and_computing_never_import_presenting_or_orchestrating():
    assert upward_imports(graph()) == []


def test_no_module_imports_another_modules_private_name():
    assert private_imports() == []


def test_modules_are_at_most_700_lines():
    assert long_modules() == []


def test_functions_are_at_most_80_lines():
    assert long_functions() == []


def test_the_lazy_api_is_spelled_out_for_editors():
    """blackholes/__init__.py imports every name of _LAZY under TYPE_CHECKING, from the module _LAZY names."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    lazy = next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "_LAZY")
    block = next(n for n in tree.body if isinstance(n, ast.If) and _is_type_checking(n))
    spelled = {(a.name, node.module) for node in block.body if isinstance(node, ast.ImportFrom) for a in node.names}
    assert spelled == {(name, f"blackholes.{module}") for name, module in lazy.items()}


if __name__ == "__main__":
    g = graph()
    for title, items in (("cycles", [" -> ".join(c) for c in cycles(g)]), ("upward", upward_imports(g)),
                         ("private", private_imports()), ("long modules", long_modules()),
                         ("long functions", long_functions())):
        print(f"{title}: {len(items)}")
        for item in items:
            print("  " + item)
    sys.exit(pytest.main([__file__, "-q"]) if "--test" in sys.argv else 0)
