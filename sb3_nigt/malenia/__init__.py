"""Kept for old imports: `MaleniaNIGT` lives in :mod:`sb3_nigt.algorithms.malenia`."""

from sb3_nigt.algorithms.malenia import MaleniaNIGT

__all__ = ["MaleniaNIGT"]
