"""Where a warning points: the first caller outside convkit.

``warnings.warn`` names the line its ``stacklevel`` selects; convkit's warnings are
about what the user's code did, so they name the user's line however deep in convkit
they are raised (what Python 3.12's ``skip_file_prefixes`` does).
"""

from __future__ import annotations

import os
import sys

__all__ = ["user_stacklevel"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn``, called from convkit, of the first frame
    outside convkit.

    Examples:
        >>> user_stacklevel()  # called from here, outside convkit: the caller itself
        1
    """
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level
