"""Moved to :mod:`sb3_nigt.backends.ray_actors`. This path is kept so that old imports and models saved by earlier versions load."""

import sys

from sb3_nigt.backends import ray_actors as _moved

sys.modules[__name__] = _moved
