"""The algorithms layer: the validated configuration shared by the SB3 algorithms."""
