"""The import graph keeps the layers one way (DESIGN.md; issue 17).

Every ``.py`` under the packages below is parsed with `ast`; every import counts, also one
inside a function. The rules::

    core      imports none of models/training/export/service/avaserve, and not torch/onnx
    models    imports core only (of ours), and torch etc.
    training  imports core and models, not export or service
    export    imports core and models, not training or service
    service   imports core only (of ours), and not torch

and no two of our modules import each other in a circle through module-level imports
(those run at import time; an import under ``if TYPE_CHECKING`` does not). Within a
package there is no circle either when imports inside functions count (a deferred import
hides a cycle rather than removing it). A synthetic tree with one breach of each rule
shows the check reports it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "models", "training", "export", "service", "avaserve")
OURS = frozenset(PACKAGES)

# Top-level names a package must not import: ours, and third-party ones.
FORBIDDEN: dict[str, frozenset[str]] = {
    "core": frozenset(
        {"models", "training", "export", "service", "avaserve", "torch", "torchvision", "onnx"}
    ),
    "models": frozenset({"training", "export", "service", "avaserve"}),
    "training": frozenset({"export", "service", "avaserve"}),
    "export": frozenset({"training", "service"}),
    "service": frozenset({"models", "training", "export", "torch", "torchvision"}),
    "avaserve": frozenset(),
}


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


# When an import runs: with its module, when a function is called, never (type checking).
RUNTIME, DEFERRED, TYPING = "runtime", "deferred", "typing"


def _imports(tree: ast.Module, module: str, is_package: bool) -> Iterator[tuple[str, str]]:
    """(imported module name, when it runs) for every import in the tree."""

    def walk(node: ast.AST, when: str) -> Iterator[tuple[str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, when
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")
                    drop = child.level - 1 if is_package else child.level
                    base = base[: len(base) - drop] if drop else base
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                for alias in child.names:
                    # "from a import b": b may be a module; resolved against the tree later.
                    yield f"{prefix}.{alias.name}", when
                    yield prefix, when
            elif isinstance(child, ast.If) and _is_type_checking(child):
                yield from walk(child, TYPING)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, TYPING if when == TYPING else DEFERRED)
            else:
                yield from walk(child, when)

    yield from walk(tree, RUNTIME)


def check_tree(root: Path) -> list[str]:
    """Every breach of the rules in the module docstring under ``root``, as readable lines."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            modules[_module_name(root, path)] = path
    problems: list[str] = []
    edges: dict[str, set[str]] = {name: set() for name in modules}
    deferred: dict[str, set[str]] = {name: set() for name in modules}  # all, within a package
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        top = name.split(".")[0]
        where = path.relative_to(root)
        for target, when in _imports(tree, name, path.name == "__init__.py"):
            first = target.split(".")[0]
            if not first:
                continue
            if first in FORBIDDEN[top] and (first not in OURS or target in modules):
                problems.append(f"{where}: {top} must not import {target}")
            if target in modules and target != name and when != TYPING:
                if when == RUNTIME:
                    edges[name].add(target)
                if first == top:
                    deferred[name].add(target)
    runtime = _cycles(edges)
    problems.extend("import cycle: " + " -> ".join(c + [c[0]]) for c in runtime)
    problems.extend(
        "import cycle through a function-level import: " + " -> ".join(c + [c[0]])
        for c in _cycles(deferred)
        if c not in runtime
    )
    return sorted(set(problems))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_repository_keeps_its_layers() -> None:
    problems = check_tree(REPO)
    assert not problems, "\n".join(problems)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def bad_tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        _write(tmp_path, f"{package}/__init__.py", "")
    _write(tmp_path, "core/ok.py", "import numpy as np\n")
    _write(tmp_path, "core/reads.py", "def f():\n    import torch\n    return torch\n")
    _write(tmp_path, "models/net.py", "import torch\nfrom core import ok\n")
    _write(tmp_path, "models/uses.py", "from training.loop import run\n")
    _write(tmp_path, "training/loop.py", "from models import net\ndef run():\n    pass\n")
    _write(tmp_path, "training/peek.py", "def f():\n    from export.bundle import g\n")
    _write(tmp_path, "export/bundle.py", "from training import loop\ndef g():\n    pass\n")
    _write(tmp_path, "service/app.py", "from models.net import Net\nimport torch.nn\n")
    _write(tmp_path, "service/engine.py", "from .cycle_b import x\n")
    _write(tmp_path, "service/cycle_b.py", "from service.engine import y\nx = 1\n")
    # The way back runs in a function: still a cycle. Only for the type checker: none.
    _write(tmp_path, "service/lazy.py", "from service import lazy_back\n")
    _write(tmp_path, "service/lazy_back.py", "def f():\n    from service import lazy\n")
    _write(
        tmp_path,
        "service/typed.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from service import lazy2\n",
    )
    _write(tmp_path, "service/lazy2.py", "from service import typed\n")
    return tmp_path


def test_a_tree_that_breaks_each_rule_is_reported(bad_tree: Path) -> None:
    problems = check_tree(bad_tree)
    assert problems == [
        "core/reads.py: core must not import torch",  # inside a function counts
        "export/bundle.py: export must not import training",
        "export/bundle.py: export must not import training.loop",
        "import cycle through a function-level import: service.lazy -> service.lazy_back -> "
        "service.lazy",
        "import cycle: service.cycle_b -> service.engine -> service.cycle_b",
        "models/uses.py: models must not import training.loop",
        "service/app.py: service must not import models.net",
        "service/app.py: service must not import torch.nn",
        "training/peek.py: training must not import export.bundle",
    ], problems
