"""The paper's experiments, one command each: ``python -m sb3_nigt.experiments <name>`` (docs/reproduction.md)."""

from sb3_nigt.experiments.registry import EXPERIMENTS, Experiment

__all__ = ["EXPERIMENTS", "Experiment"]
