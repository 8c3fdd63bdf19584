"""Shared parts of the sb3-nigt algorithms: timing model, aggregation rules, estimator, collector, NIGT loop."""
