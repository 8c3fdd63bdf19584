"""Warnings that point at the user's line, however deep inside the library they are raised."""

from __future__ import annotations

import os
import sys

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the sb3_nigt folder


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called by the caller of this function that names the first frame
    outside sb3_nigt (the user's line), whatever the number of library frames in between (an algorithm's
    ``__init__`` calling its base class's, a policy built by the algorithm, ...)."""
    frame = sys._getframe(1)  # the function that is about to warn: stacklevel 1
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE + os.sep):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
