"""Backends by name (``backend="inline"``): a registry whose optional backends are imported on first use.

``"inline"`` (the default) is registered as a class; ``"subprocess"``, ``"ray"`` and ``"torch_distributed"`` as
:class:`LazyBackend` entries (a module and a class name), so that ``import sb3_nigt`` imports no backend it does not
use: neither the process machinery, nor ray, nor ``torch.distributed``'s backend module.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Union

from sb3_nigt.backends.contract import Backend, BackendHooks, BackendOptions
from sb3_nigt.backends.inline import InlineBackend


class LazyBackend(BackendHooks):
    """A registry entry that imports ``module`` and builds ``module.name()`` only when it is used; its hooks
    (:class:`~sb3_nigt.backends.contract.BackendHooks`) are the class's, read on first use too.

    :param module: the dotted module name.
    :param name: the backend class in it (no required arguments).
    """

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def load(self) -> Any:
        """The backend class. :raises ImportError: when its module (or what it needs, e.g. ray) is missing."""
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self) -> Backend:
        return self.load()()

    def check_algorithm(self, algorithm: str, clock: str, per_agent_params: bool) -> None:  # type: ignore[override]
        hooks_of(self.load()).check_algorithm(algorithm, clock=clock, per_agent_params=per_agent_params)

    def is_primary(self) -> bool:  # type: ignore[override]
        return hooks_of(self.load()).is_primary()

    def __repr__(self) -> str:
        return f"LazyBackend({self.module!r}, {self.name!r})"


#: Backends by name (``backend="inline"``). :func:`register_backend` adds one.
BACKENDS: dict[str, Callable[[], Backend]] = {
    "inline": InlineBackend,
    "subprocess": LazyBackend("sb3_nigt.backends.subprocess", "SubprocessBackend"),
    "ray": LazyBackend("sb3_nigt.backends.ray_actors", "RayBackend"),
    "torch_distributed": LazyBackend("sb3_nigt.backends.torch_distributed", "TorchDistributedBackend"),
}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``backend=name`` build ``factory()`` (a class with no required arguments, bound before use, or a
    :class:`LazyBackend`)."""
    BACKENDS[name] = factory


def make_backend(spec: Union[str, Backend], worker_args: dict[str, Any], options: BackendOptions) -> Backend:
    """A bound backend from a registered name or an instance.

    :raises ValueError: for an unknown name or an object that does not implement :class:`Backend`.
    """
    if isinstance(spec, str):
        if spec not in BACKENDS:
            raise ValueError(f"backend: unknown backend {spec!r}; registered backends are {sorted(BACKENDS)}")
        backend = BACKENDS[spec]()
    elif isinstance(spec, Backend):
        backend = spec
    else:
        raise ValueError(f"backend: expected a registered name or a Backend instance, got {spec!r}")
    backend.bind(worker_args, options)
    return backend


class _DefaultHooks(BackendHooks):
    """The hooks of a backend that declares none of its own (only the ones it has replace the defaults)."""

    def __init__(self, backend: Any) -> None:
        for hook in ("check_algorithm", "is_primary", "arrival_counter"):
            if hasattr(backend, hook):
                setattr(self, hook, getattr(backend, hook))


def hooks_of(spec: Any) -> BackendHooks:
    """The optional hooks of a backend given as a registered name, a registered factory or class, or an instance:
    itself when it derives from :class:`BackendHooks` (a :class:`LazyBackend` does), else its own hooks with the
    defaults for those it lacks. A name that is not registered has the defaults."""
    if isinstance(spec, str):
        spec = BACKENDS.get(spec)
    if isinstance(spec, BackendHooks) or (isinstance(spec, type) and issubclass(spec, BackendHooks)):
        return spec  # type: ignore[return-value]
    return _DefaultHooks(spec)
