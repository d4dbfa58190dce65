"""Release metadata: the version has one source, and the distribution is ``torch-convkit``."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import convkit


def test_version_matches_the_installed_distribution() -> None:
    # hatch reads the version from convkit/__init__.py; an install built from any other
    # source of truth (or the unrelated PyPI project "convkit") would disagree here.
    assert convkit.__version__ == importlib.metadata.version("torch-convkit")


# ------------------------------------------------------------- the distribution's name

ROOT = Path(__file__).resolve().parents[1]
# The one sentence, in README.md and docs/getting-started.md, that names the wrong command
# on purpose; the scan skips exactly this wording (any line breaks), nothing around it.
WHY_NOT_CONVKIT = (
    "`pip install convkit` is the wrong command: on PyPI the name `convkit` belongs to an "
    "unrelated project (an SDK for WhatsApp bots), so it installs that instead of this library."
)
WHY_PATTERN = re.compile(r"\s+".join(re.escape(word) for word in WHY_NOT_CONVKIT.split()))
# `pip install convkit`, `pip install -U convkit[plot]`, `"convkit[plot]"`, `'convkit[`:
# each installs the unrelated "convkit" distribution, not torch-convkit.
WRONG_INSTALL = re.compile(
    r"""pip3?\s+install\s+(?:-\S+\s+)*["']?convkit(?![\w.-])|["']convkit\["""
)
SCANNED = (
    "README.md",
    "mkdocs.yml",
    "pyproject.toml",
    "docs/**/*.md",
    "src/**/*.py",
    "examples/**/*.py",
    "benchmarks/**/*.py",
    ".github/workflows/*.yml",
    ".ci/*",
)


def wrong_install_commands(text: str) -> list[str]:
    """Each install command in ``text`` that would fetch PyPI's unrelated ``convkit``."""
    text = WHY_PATTERN.sub("", text)
    return [
        f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for m in WRONG_INSTALL.finditer(text)
    ]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("pip install torch-convkit", False),
        ('pip install "torch-convkit[plot]"', False),
        ('pip install -e ".[dev]"', False),
        ("import convkit  # from convkit import fit", False),
        (WHY_NOT_CONVKIT, False),
        (WHY_NOT_CONVKIT.replace("an unrelated", "an\nunrelated"), False),
        ("pip install convkit", True),
        ("pip install -U convkit", True),
        ("pip install convkit[plot]", True),
        ('pip install "convkit[plot]"', True),
        ("needs matplotlib ('convkit[plot]' extra)", True),
        (WHY_NOT_CONVKIT + "\n\n    pip install convkit\n", True),
        (WHY_NOT_CONVKIT.replace("WhatsApp bots", "chat bots"), True),
    ],
)
def test_wrong_install_commands_are_found(text: str, found: bool) -> None:
    assert bool(wrong_install_commands(text)) is found


def test_no_document_or_message_says_pip_install_convkit() -> None:
    files = sorted({path for pattern in SCANNED for path in ROOT.glob(pattern) if path.is_file()})
    names = {str(path.relative_to(ROOT)) for path in files}
    assert {"README.md", "docs/getting-started.md", "src/convkit/train/history.py"} <= names
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in files
        if (found := wrong_install_commands(path.read_text(encoding="utf-8")))
    }
    assert not offenders, offenders


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_install_pages_say_why_not_convkit(page: str) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    assert len(WHY_PATTERN.findall(text)) == 1
    assert "pip install torch-convkit" in text


# --------------------------------------------------------- no cap on torch's releases

#: Specifier operators that refuse newer releases.
CAPS = ("<", "<=", "==", "~=", "===")


def upper_caps(requirements: list[str], names: tuple[str, ...]) -> list[str]:
    """The requirements on ``names`` (outside extras) that refuse some newer release."""
    from packaging.requirements import Requirement

    found = []
    for line in requirements:
        requirement = Requirement(line)
        in_extra = requirement.marker is not None and "extra" in str(requirement.marker)
        if requirement.name in names and not in_extra:
            found += [f"{requirement}" for spec in requirement.specifier if spec.operator in CAPS]
    return found


@pytest.mark.parametrize(
    ("line", "capped"),
    [
        ("torch>=2.6", False),
        ("torch>=2.6,<=2.14.1", True),
        ("torchvision<0.30", True),
        ("torch==2.14.1", True),
        ("torch~=2.6", True),
        ('torch<=2.14.1; extra == "bench"', False),  # an extra's pin is not the library's
        ("numpy<2", False),  # not torch or torchvision
    ],
)
def test_upper_caps_are_found(line: str, capped: bool) -> None:
    assert bool(upper_caps([line], ("torch", "torchvision"))) is capped


def test_metadata_puts_no_upper_cap_on_torch() -> None:
    """A cap would refuse every newer torch for every user; the floors stay (CVE-2025-32434)."""
    from packaging.requirements import Requirement

    requirements = importlib.metadata.requires("torch-convkit") or []
    assert not upper_caps(requirements, ("torch", "torchvision")), (
        "the installed metadata caps torch; if pyproject.toml doesn't, the install is older "
        "than it: reinstall with pip install -e ."
    )
    floors = {
        r.name: {str(s) for s in r.specifier}
        for r in map(Requirement, requirements)
        if r.name in ("torch", "torchvision")
    }
    assert floors == {"torch": {">=2.6"}, "torchvision": {">=0.21"}}
