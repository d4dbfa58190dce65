"""The model side's API reference: public names only, each with an example that runs.

The site renders with mkdocstrings' ``filters: public`` (mkdocs.yml), which keeps a
module's ``__all__``; griffe (what mkdocstrings reads) says here which names that renders. The
examples themselves run as doctests (``--doctest-modules``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import typing
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Model-side reference pages and the module each renders.
PAGES = {
    "blocks": "convkit.layers.blocks",
    "heads": "convkit.layers.heads",
    "residual": "convkit.layers.residual",
    "squeeze_excite": "convkit.layers.squeeze_excite",
    "separable": "convkit.layers.separable",
    "drop_path": "convkit.layers.drop_path",
    "init": "convkit.layers.init",
    "factory": "convkit.models.factory",
    "loading": "convkit.models.loading",
    "shapes": "convkit.shapes",
}

#: Helpers that leaked into the reference before (issue 25, item 7), model side.
LEAKED = {
    "convkit.models.factory": [
        "assemble_cnn",
        "plain_features",
        "blocks_output_size",
        "check_stack_fits",
    ],
    "convkit.layers.init": ["check_init"],
}


@functools.cache
def _package() -> griffe.Module:
    """convkit as griffe (what mkdocstrings reads) sees it, loaded once."""
    return griffe.load("convkit", search_paths=[str(ROOT / "src")])


def _rendered(module: str) -> set[str]:
    """The names mkdocstrings renders for ``module`` with ``filters: public`` (submodules
    are not rendered: ``show_submodules`` is off)."""
    loaded = _package()[module.removeprefix("convkit.")]
    return {
        name for name, member in loaded.members.items() if member.is_public and not member.is_module
    }


def test_the_reference_filters_by_all() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^            filters: public\b", config, re.M)


@pytest.mark.parametrize(("page", "module"), PAGES.items())
def test_reference_pages_render_public_names_only(page: str, module: str) -> None:
    text = (ROOT / "docs" / "reference" / f"{page}.md").read_text(encoding="utf-8")
    assert re.search(rf"^::: {re.escape(module)}$", text, re.M)
    assert "filters:" not in text  # the site-wide filters: public applies
    assert _rendered(module) == set(importlib.import_module(module).__all__)
    for name in LEAKED.get(module, []):
        assert name not in _rendered(module)


def _examples_missing(module: str) -> list[str]:
    missing = []
    mod = importlib.import_module(module)
    for name in mod.__all__:
        obj = getattr(mod, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if "Examples:" not in (inspect.getdoc(obj) or ""):
            missing.append(name)
        if inspect.isclass(obj) and typing.Protocol not in obj.__mro__:
            for attr, value in vars(obj).items():
                main = callable(value) and attr not in ("forward", "extra_repr")
                documented = "Examples:" in (inspect.getdoc(value) or "")
                if main and not attr.startswith("_") and not documented:
                    missing.append(f"{name}.{attr}")
    return missing


@pytest.mark.parametrize("module", PAGES.values())
def test_every_public_class_function_and_method_has_examples(module: str) -> None:
    assert _examples_missing(module) == []


def test_inits_is_documented() -> None:
    init = _package()["layers.init"]
    assert init["INITS"].docstring is not None
    assert "init_weights" in init["INITS"].docstring.value
