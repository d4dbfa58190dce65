"""The package's shape: folders that show the architecture, and small functions.

The model side (``layers/``, ``models/``, ``shapes/``) and the training side (``train/``)
never import each other. Below both sit the checkpoint format (``checkpoints/``), the
small shared helpers (``utils/``) and the bundled data (``datasets``): they import neither
half. Above both sit the package root and ``viz/``, which may import anything and which
nothing else imports.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim import Optimizer

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


# ------------------------------------------------------------------ the walk to the first step
# Issue 23: from fit to the first optimizer.step() a reader should cross a handful of
# modules. Measured with sys.setprofile over fit of the README's network on the bundled
# sample (a 64-sample slice: the walk does not depend on the size), counting every
# convkit file entered, the network's own forward included, and every distinct convkit
# function called (comprehensions and generator expressions, expressions inside a
# function, left out). The target is 6 modules and 50 functions; these bounds
# are what the code reaches now (17 modules and 118 functions before the Run), so that
# the walk can only get shorter.
WALK_MODULES = 13
WALK_FUNCTIONS = 105

_EXPRESSIONS = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")


def _walk_to_the_first_step() -> tuple[set[str], set[tuple[str, int]], list[str]]:
    """The files entered, the functions called, and the convkit frames on the stack at
    the first ``optimizer.step()``, as ``(module, function)`` strings, outermost first."""
    from torch.utils.data import TensorDataset

    from convkit import build_cnn, fit, mnist_sample
    from helpers import NOTEBOOK

    root = str(PACKAGE) + "/"
    files: set[str] = set()
    functions: set[tuple[str, int]] = set()
    stack: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        if code.co_filename.startswith(root):
            files.add(code.co_filename)
            if code.co_name not in _EXPRESSIONS:
                functions.add((code.co_filename, code.co_firstlineno))
        elif code.co_name == "step" and isinstance(frame.f_locals.get("self"), Optimizer):
            sys.setprofile(None)
            caller = frame.f_back
            while caller is not None:
                if caller.f_code.co_filename.startswith(root):
                    where = Path(caller.f_code.co_filename).relative_to(PACKAGE)
                    stack.insert(0, f"{where.as_posix()}:{caller.f_code.co_qualname}")
                caller = caller.f_back

    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, **NOTEBOOK)
    train, test = mnist_sample(train=True), mnist_sample(train=False)
    train = TensorDataset(*(t[:64] for t in train.tensors))
    test = TensorDataset(*(t[:64] for t in test.tensors))
    sys.setprofile(profile)
    try:
        fit(model, train, epochs=1, val_data=test, seed=0, device="cpu", progress=False)
    finally:
        sys.setprofile(None)
    return files, functions, stack


def test_fit_reaches_the_first_step_through_a_short_walk() -> None:
    files, functions, stack = _walk_to_the_first_step()
    assert stack, "the trace never reached optimizer.step()"
    # fit -> Run.fit -> epochs -> one_epoch -> all_batches -> one_batch -> step: two modules
    assert stack == [
        "train/loops.py:fit",
        "train/run.py:Run.fit",
        "train/run.py:Run._epochs",
        "train/run.py:Run.one_epoch",
        "train/run.py:Run.all_batches",
        "train/run.py:Run.one_batch",
        "train/run.py:Run.step",
    ]
    modules = sorted(Path(f).relative_to(PACKAGE).as_posix() for f in files)
    assert len(modules) <= WALK_MODULES, modules
    assert len(functions) <= WALK_FUNCTIONS, len(functions)
