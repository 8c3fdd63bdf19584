"""The worker side: the rollout worker, the typed messages between it and the main process, and its loop."""
