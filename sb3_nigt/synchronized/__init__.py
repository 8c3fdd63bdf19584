"""Kept for old imports: `SynchronizedNIGT` lives in :mod:`sb3_nigt.algorithms.synchronized`."""

from sb3_nigt.algorithms.synchronized import SynchronizedNIGT

__all__ = ["SynchronizedNIGT"]
