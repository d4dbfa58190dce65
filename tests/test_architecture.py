"""The package's shape: two halves that never import each other, and small functions.

Model side (blocks, heads, factory, shapes, layer helpers, the model loader) and training
side (loops, callbacks, batching, metrics) meet only in modules below both that import
neither (the checkpoint format, dry runs, argument checks, types), and in the package
root and ``viz``, which sit above both.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import convkit

PACKAGE = Path(convkit.__file__).parent

#: The training side; every module not listed here or below is on the model side.
TRAINING = {
    "training", "history", "callbacks", "_loop", "_epochs", "_optim", "_data", "_data_check",
    "_runtime", "_distributed", "_metrics", "_tasks", "_task_setup", "_setup", "datasets",
}  # fmt: skip
#: Below both halves: they import neither.
SHARED = {"checkpoints", "_files", "_restore", "_probe", "_validation", "_typing", "devices"}
#: Above both halves: they may import anything.
TOP = {"__init__", "viz", "_hooks", "_interpretation", "_plotting"}

#: The longest a function body may be (lines, without its docstring).
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    return {path.stem: path for path in PACKAGE.glob("*.py")}


def _imports(path: Path) -> set[str]:
    """The convkit modules ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 or module.startswith("convkit"):
                parts = module.removeprefix("convkit").lstrip(".").split(".")
                if parts[0]:
                    found.add(parts[0])
                else:  # from . import x, y
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("convkit."):
                    found.add(alias.name.split(".")[1])
    return found


def _side(name: str) -> str:
    if name in TOP:
        return "top"
    if name in SHARED:
        return "shared"
    return "training" if name in TRAINING else "model"


def test_the_two_halves_never_import_each_other() -> None:
    modules = _modules()
    assert {"training", "factory", "checkpoints"} <= set(modules)
    wrong = []
    for name, path in sorted(modules.items()):
        side = _side(name)
        for target in sorted(_imports(path) & set(modules)):
            other = _side(target)
            if side == "top" or other == "shared" or other == side:
                continue
            wrong.append(f"{name} ({side}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_the_import_walk_sees_lazy_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from .factory import build_cnn\n    from . import shapes\n")
    assert _imports(source) == {"factory", "shapes"}


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_function_is_longer_than_the_limit(path: Path) -> None:
    long = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            first = body[1] if has_doc and len(body) > 1 else body[0]
            lines = (node.end_lineno or first.lineno) - first.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long.append(f"{node.name}: {lines} lines")
    assert not long, f"{path.name}: " + ", ".join(long)


def test_library_text_tells_no_history() -> None:
    """Docstrings and comments describe the present code (history is in the changelog)."""
    hits = [
        f"{path.name}:{number}"
        for path in sorted(PACKAGE.glob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "notebook" in line.lower()
    ]
    assert not hits, f"'notebook' in library text at {hits}"
