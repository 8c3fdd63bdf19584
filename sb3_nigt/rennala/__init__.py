"""Kept for old imports: `RennalaNIGT` lives in :mod:`sb3_nigt.algorithms.rennala`."""

from sb3_nigt.algorithms.rennala import RennalaNIGT

__all__ = ["RennalaNIGT"]
