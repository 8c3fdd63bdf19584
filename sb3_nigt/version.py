"""The simulated clock's engine version.

``ENGINE_VERSION`` changes whenever the simulated clock's bits change for the same seed and settings (a new
rollout order, a new floating-point summation): results cached under one version are never mixed with another's
(docs/reproduction.md). It is not the package version.
"""

#: 1: one trajectory at a time, one backward per unit of ≤ 8 trajectories of one agent.
#: 2: lockstep batches of ≤ 16 trajectories across agents, one weighted backward per batch (docs/time.md).
ENGINE_VERSION = 2
