"""Release metadata: the version has one source, and the distribution is ``torch-convkit``."""

from __future__ import annotations

import importlib.metadata

import convkit


def test_version_matches_the_installed_distribution() -> None:
    # hatch reads the version from convkit/__init__.py; an install built from any other
    # source of truth (or the unrelated PyPI project "convkit") would disagree here.
    assert convkit.__version__ == importlib.metadata.version("torch-convkit")
