"""Old import paths (``sb3_nigt.common.timing`` and the like), kept as aliases of the modules' new homes in
``core/``, ``clock/``, ``workers/``, ``backends/`` and ``algorithms/`` (docs/architecture.md)."""
