from sb3_nigt.afedpg.afedpg import AFedPG

__all__ = ["AFedPG"]
