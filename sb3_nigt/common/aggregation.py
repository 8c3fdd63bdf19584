"""Moved to :mod:`sb3_nigt.core.aggregation`. This path is kept so that old imports and models saved by earlier versions load."""

import sys

from sb3_nigt.core import aggregation as _moved

sys.modules[__name__] = _moved
