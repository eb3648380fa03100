"""Every cross-reference in the documentation resolves to something that exists.

Docstrings name functions, classes and modules with Sphinx roles (:func:`blackholes.x.y`,
:class:`~blackholes.x.Y`, :mod:`blackholes.x`); the README names them in backticks
(`blackholes.x.y`) and imports them in its examples. A module moved or a function
renamed leaves these behind; this test finds them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "blackholes"
README = ROOT / "README.md"
ROLE = re.compile(r":(func|class|mod|meth|attr|data|exc|obj):`([^`]+)`")
DOTTED = re.compile(r"`(blackholes(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\([^`]*\))?`")  # README: `blackholes.x.y(...)`


def _target(text: str) -> str:
    """``~a.b``, ``title <a.b>``, ``a.b()`` -> ``a.b``."""
    text = text.strip()
    inner = re.search(r"<([^>]+)>$", text)
    return (inner.group(1) if inner else text).lstrip("~").removesuffix("()")


def _lookup(dotted: str):
    """The object ``dotted`` names (a module, or an attribute reached from the longest importable module)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)  # AttributeError: a dangling reference
        return obj
    raise ImportError(dotted)


def resolves(role: str, name: str, home: str | None) -> bool:
    """Does ``name`` (as written in module ``home``) name something real of the role's kind?"""
    tries = [name] if name.startswith("blackholes.") or name == "blackholes" else [f"{home}.{name}"] if home else []
    for dotted in tries:
        try:
            obj = _lookup(dotted)
        except (ImportError, AttributeError):
            continue
        return role != "mod" or inspect.ismodule(obj)
    if home and role in ("meth", "attr") and "." not in name:  # relative to a class of the module
        module = importlib.import_module(home)
        classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == home]
        return any(hasattr(c, name) or name in getattr(c, "__annotations__", {})  # a dataclass field
                   or f"self.{name} =" in inspect.getsource(c) for c in classes)  # set in __init__
    return False


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def references() -> list[tuple[str, str, str, str | None]]:
    """(where, role, name, home module) for every reference in the sources and the README."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in ROLE.finditer(line):
                found.append((f"{path.relative_to(ROOT)}:{i}", m.group(1), _target(m.group(2)), _module(path)))
    text = README.read_text(encoding="utf-8")
    for i, line in enumerate(text.splitlines(), 1):
        for m in DOTTED.finditer(line):
            found.append((f"README.md:{i}", "obj", m.group(1), None))
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("blackholes"):
                found += [("README.md (example)", "obj", f"{node.module}.{a.name}", None) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [("README.md (example)", "mod", a.name, None) for a in node.names
                          if a.name.startswith("blackholes")]
    return found


def test_the_checker_tells_a_dangling_reference_from_a_real_one():
    assert resolves("func", "blackholes.analysis.exact.find_groups", None)
    assert resolves("func", "find_groups", "blackholes.analysis.exact")  # as written inside its own module
    assert not resolves("func", "blackholes.tensors.load_matrix", None)  # a module from before the layout
    assert not resolves("mod", "blackholes.scan", None)  # a function, not a module
    assert _target("~blackholes.analysis.groups.scan()") == "blackholes.analysis.groups.scan"


def test_every_cross_reference_resolves():
    pytest.importorskip("matplotlib")  # render modules are imported to look names up
    dangling = [f"{where}: {role} {name}" for where, role, name, home in references()
                if not resolves(role, name, home)]
    assert dangling == []
