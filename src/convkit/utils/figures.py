"""Figures for every plot convkit draws (``History.plot``, ``convkit.viz``).

matplotlib is the optional ``plot`` extra: it is imported only when a figure is made, and
without it :func:`new_figure` raises an ``ImportError`` naming the extra.

Each figure is managed by pyplot, as ``plt.subplots`` would make it, so ``plt.show()``
shows it and ``plt.close`` closes it. In Jupyter a cell that ends in one shows it once:
displaying the figure removes it from pyplot's list, so the inline backend does not draw
it a second time when the cell ends.

Text with CJK characters (Japanese class names, titles) is drawn in a CJK font picked from
the fonts matplotlib can see (Noto Sans CJK JP, IPAexGothic, ...), set on that text only:
the user's ``rcParams`` are never changed. With no such font, a one-line warning names one
to install.
"""

from __future__ import annotations

import functools
import io
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CJK_FONTS", "INSTALL_HINT", "cjk_font", "has_cjk", "new_figure"]

INSTALL_HINT = 'pip install "torch-convkit[plot]"'

#: CJK fonts in order of preference (Japanese first); the first one matplotlib knows wins.
CJK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans JP",
    "IPAexGothic",
    "IPAGothic",
    "Hiragino Sans",
    "Hiragino Kaku Gothic ProN",
    "Yu Gothic",
    "Meiryo",
    "MS Gothic",
    "TakaoGothic",
    "Source Han Sans JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
)

#: What to install when no CJK font is found.
FONT_HINT = (
    "no CJK font found for the Japanese/CJK text in this figure, so it is drawn as empty "
    "boxes. Install one and restart Python: `apt install fonts-noto-cjk` (Debian, Ubuntu, "
    "Colab), `brew install --cask font-noto-sans-cjk-jp` (macOS) or the IPAex fonts "
    "(moji.or.jp/ipafont)."
)

_CJK = re.compile(
    "[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\uac00-\ud7af]"
)
_CJK_FILE = re.compile(r"(?i)cjk|ipaexg|ipag|takao|hiragino|yugoth|meiryo|msgothic|sourcehansans")


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds Chinese, Japanese or Korean characters."""
    return _CJK.search(text) is not None


@functools.cache
def cjk_font() -> str | None:
    """The name of a CJK font matplotlib can draw with, or ``None``.

    Fonts installed after matplotlib built its font cache are not in its list; their
    files are then looked up among the system's fonts and added.
    """
    from matplotlib import font_manager

    def known() -> str | None:
        names = {font.name for font in font_manager.fontManager.ttflist}
        return next((name for name in CJK_FONTS if name in names), None)

    found = known()
    if found is not None:
        return found
    for path in font_manager.findSystemFonts():
        if _CJK_FILE.search(Path(path).name):
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError):  # a file FreeType can't read
                continue
    return known()


def _use_cjk_font(figure: Any) -> None:
    """Draw every text of ``figure`` that holds CJK characters in a CJK font."""
    from matplotlib.text import Text

    texts = [t for t in figure.findobj(Text) if has_cjk(t.get_text())]
    if not texts:
        return
    font = cjk_font()
    if font is None:
        if not getattr(figure, "_convkit_font_hint", False):  # once per figure
            figure._convkit_font_hint = True
            warnings.warn(f"convkit: {FONT_HINT}", UserWarning, stacklevel=3)
        return
    for text in texts:
        family = text.get_fontfamily()
        if font not in family:
            text.set_fontfamily([font, *family])


@functools.cache
def _figure_class() -> type[Figure]:
    from matplotlib.figure import Figure

    class ConvkitFigure(Figure):
        """A ``Figure`` that picks a CJK font for CJK text and shows once in Jupyter."""

        def draw(self, renderer: Any) -> None:
            _use_cjk_font(self)
            super().draw(renderer)

        def _ipython_display_(self) -> None:
            import matplotlib.pyplot as plt
            from IPython.display import Image, display

            plt.close(self)  # shown here, so the inline backend doesn't show it again
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", bbox_inches="tight")
            display(Image(data=buffer.getvalue(), format="png"))  # type: ignore[no-untyped-call]

    ConvkitFigure.__module__ = __name__
    ConvkitFigure.__qualname__ = "ConvkitFigure"
    return ConvkitFigure


def new_figure(caller: str, figsize: tuple[float, float]) -> Figure:
    """An empty pyplot-managed figure with constrained layout.

    Args:
        caller: Named in the ``ImportError`` when matplotlib is missing.
        figsize: Width and height in inches.

    Raises:
        ImportError: If matplotlib isn't installed (the message names the extra).
    """
    try:
        import matplotlib.figure  # noqa: F401  (the class the figure subclasses)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            f"{caller} needs matplotlib, which is not installed. Install convkit's 'plot' "
            f"extra: {INSTALL_HINT}."
        ) from err
    figure: Figure = plt.figure(figsize=figsize, layout="constrained", FigureClass=_figure_class())
    return figure
