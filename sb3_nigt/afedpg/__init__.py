"""Kept for old imports: `AFedPG` lives in :mod:`sb3_nigt.algorithms.afedpg`."""

from sb3_nigt.algorithms.afedpg import AFedPG

__all__ = ["AFedPG"]
