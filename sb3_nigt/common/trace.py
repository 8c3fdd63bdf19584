"""Moved to :mod:`sb3_nigt.clock.trace`. This path is kept so that old imports and models saved by earlier versions load."""

import sys

from sb3_nigt.clock import trace as _moved

sys.modules[__name__] = _moved
