"""Moved to :mod:`sb3_nigt.workers.rollout`. This path is kept so that old imports and models saved by earlier versions load."""

import sys

from sb3_nigt.workers import rollout as _moved

sys.modules[__name__] = _moved
