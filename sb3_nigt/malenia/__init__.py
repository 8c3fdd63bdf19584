from sb3_nigt.malenia.malenia import MaleniaNIGT

__all__ = ["MaleniaNIGT"]
