from sb3_nigt.synchronized.synchronized import SynchronizedNIGT

__all__ = ["SynchronizedNIGT"]
