"""Moved to :mod:`sb3_nigt.backends` (the contract, the registry, the inline backend, the remote driver and its
transports). This module re-exports the names it used to define, so that old imports and saved models still load."""

from sb3_nigt.backends.contract import (
    Backend,
    BackendHooks,
    BackendOptions,
    Event,
    WorkerError,
    WorkerLost,
    default_start_method,
    single_threaded_torch,
)
from sb3_nigt.backends.inline import InlineBackend
from sb3_nigt.backends.registry import BACKENDS, LazyBackend, hooks_of, make_backend, register_backend
from sb3_nigt.backends.subprocess import MAIN_GUARD_MESSAGE, SubprocessBackend
from sb3_nigt.workers.loop import WorkerLoop
from sb3_nigt.workers.messages import AgentReport, AgentRun

__all__ = [
    "BACKENDS", "MAIN_GUARD_MESSAGE", "AgentReport", "AgentRun", "Backend", "BackendHooks", "BackendOptions", "Event",
    "InlineBackend", "LazyBackend", "SubprocessBackend", "WorkerError", "WorkerLoop", "WorkerLost",
    "default_start_method", "hooks_of", "make_backend", "register_backend", "single_threaded_torch",
]
