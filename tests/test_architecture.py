"""The package's shape: folders that show the architecture, and small functions.

The model side (``layers/``, ``models/``, ``shapes/``) and the training side (``train/``)
never import each other. Below both sit the checkpoint format (``checkpoints/``), the
small shared helpers (``utils/``) and the bundled data (``datasets``): they import neither
half. Above both sit the package root and ``viz/``, which may import anything and which
nothing else imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import convkit

PACKAGE = Path(convkit.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))

#: Each top-level folder (or module) of the package and the side it belongs to.
SIDES = {
    "layers": "model",
    "models": "model",
    "shapes": "model",
    "train": "training",
    "checkpoints": "below",
    "utils": "below",
    "datasets": "below",
    "viz": "above",
    "deploy": "above",
    "__init__": "above",
}

#: The longest a function body may be (lines, without its docstring).
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    """``convkit.train.run`` for ``.../convkit/train/run.py`` (packages without ``__init__``)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """The convkit modules that ``module`` (at ``path``) imports, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("convkit"):
                continue
            found.add(target)
            if node.module is None:  # from . import x, y
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("convkit."))
    return found


def _side(module: str) -> str:
    parts = module.split(".")
    return SIDES[parts[1] if len(parts) > 1 else "__init__"]


def test_every_source_file_belongs_to_a_known_side() -> None:
    assert {"layers", "models", "shapes", "train", "checkpoints", "utils", "viz"} <= {
        p.relative_to(PACKAGE).parts[0] for p in SOURCES
    }
    for path in SOURCES:
        _side(_module_name(path))  # a KeyError names a folder no rule covers


def test_the_halves_import_only_what_is_below_them() -> None:
    allowed = {
        "model": {"model", "below"},
        "training": {"training", "below"},
        "below": {"below"},
        "above": {"model", "training", "below", "above"},
    }
    wrong = []
    for path in SOURCES:
        module = _module_name(path)
        for target in sorted(_imports(path, module)):
            if target != "convkit" and _side(target) not in allowed[_side(module)]:
                wrong.append(f"{module} ({_side(module)}) imports {target} ({_side(target)})")
    assert not wrong, "\n".join(wrong)


def test_utils_import_nothing_else_from_convkit() -> None:
    for path in PACKAGE.joinpath("utils").glob("*.py"):
        module = _module_name(path)
        assert all(t.startswith("convkit.utils") for t in _imports(path, module)), module


def test_the_import_walk_resolves_relative_and_lazy_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from ..layers.blocks import ConvBlock\n"
        "def f():\n"
        "    from .factory import build_cnn\n"
        "    from .. import shapes\n"
    )
    assert _imports(source, "convkit.models.m") == {
        "convkit.layers.blocks",
        "convkit.models.factory",
        "convkit",
        "convkit.shapes",
    }
    assert _side("convkit.models.m") == "model" and _side("convkit.layers.blocks") == "model"
    assert _side("convkit.train.run") == "training" and _side("convkit") == "above"


def test_no_formatter_pragmas_pack_code_in_the_library() -> None:
    """ruff format decides the layout; nothing is squeezed onto a line to meet a limit."""
    hits = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in SOURCES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "fmt: skip" in line or "fmt: off" in line
    ]
    assert not hits, hits


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
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
        for path in SOURCES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "notebook" in line.lower() and not line.lstrip().startswith(("from ", "import "))
    ]
    assert not hits, f"'notebook' in library text at {hits}"
