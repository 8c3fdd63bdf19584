from sb3_nigt.rennala.rennala import RennalaNIGT

__all__ = ["RennalaNIGT"]
