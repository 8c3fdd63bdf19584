"""The workers a model keeps from one ``learn`` call to the next (docs/backends.md, "The workers' lifetime").

A model's first ``learn`` starts its backend (worker processes, Ray actors, the inline worker, with their
environments); later calls reuse it as long as what the workers are built from is unchanged (the *key*: the
backend, its options, the environments' factories, the policy class and arguments, the spaces, ``step_data``
and the policy's buffers). The workers are closed by the model's ``close()``, when the model is garbage-collected
and at interpreter exit (one ``weakref.finalize`` per started backend), and by ``learn`` itself when it ends with
an exception.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Optional

import numpy as np

from sb3_nigt.backends.contract import Backend, BackendOptions

#: Every started set of workers of this process, so that a test harness can close them all (:func:`close_all`).
_STARTED: "weakref.WeakSet[LiveWorkers]" = weakref.WeakSet()


def worker_key(spec: Any, worker_args: dict[str, Any], options: BackendOptions) -> tuple:
    """What a backend's workers are built from, comparable with :func:`same_key`.

    :param spec: the model's ``backend`` (a registered name or a Backend instance, compared by identity).
    :param worker_args: the :class:`~sb3_nigt.workers.rollout.GradientWorker` arguments; the policy's buffers (a
        dict of tensors) are compared by value, as bytes.
    :param options: the backend's options (a dataclass, compared by value).
    """
    args = dict(worker_args)
    args["buffers"] = tuple((name, tuple(tensor.shape), str(tensor.dtype), tensor.detach().cpu().numpy().tobytes())
                            for name, tensor in worker_args.get("buffers", {}).items())
    return (spec if isinstance(spec, str) else _Identity(spec), options, args)


class _Identity:
    """Compares equal to another ``_Identity`` of the same object only (a backend instance is its own key)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.value is self.value

    __hash__ = None  # type: ignore[assignment]


def same_key(a: Any, b: Any) -> bool:
    """Whether two keys of :func:`worker_key` are equal; values whose ``==`` fails or is ambiguous (arrays) are
    equal only when they are the same object or have equal contents as NumPy arrays."""
    if a is b:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_key(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same_key(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    try:
        return bool(a == b)
    except Exception:  # an object whose == raises or is not a truth value: different
        return False


def _close_backend(backend: Backend, pid: int) -> None:
    """Close ``backend`` if this is the process that started it (a forked child never closes its parent's
    workers); errors are swallowed, as at interpreter exit the transport may already be gone."""
    if os.getpid() != pid:
        return
    try:
        backend.close()
    except Exception:  # at exit or during collection there is nobody to report to
        pass


class LiveWorkers:
    """A model's started backend between ``learn`` calls, the key it was built from, and the collector's
    cancellation epoch (the live epoch of a backend never decreases, so the next collector continues from it).

    :ivar backend: the started backend, or None.
    :ivar epoch: the last collector's epoch (int >= 0).
    """

    def __init__(self) -> None:
        self.backend: Optional[Backend] = None
        self.key: Any = None
        self.epoch = 0
        self._bound: Any = None  # the backend's ``worker_args`` when it was started (for backends that keep them)
        self._finalizer: Optional[weakref.finalize] = None

    def reusable(self, key: Any) -> Optional[Backend]:
        """The started backend if it was built from ``key`` and is still bound to the arguments it was started with
        (a backend instance shared with another model may have been bound again); else None, after closing it."""
        if self.backend is not None and same_key(self.key, key) and getattr(self.backend, "worker_args", self._bound) is self._bound:
            return self.backend
        self.close()
        return None

    def adopt(self, owner: Any, backend: Backend, key: Any, epoch: int = 0) -> None:
        """Keep the started ``backend``, built from ``key``, until :meth:`close`, until ``owner`` is collected, or
        until interpreter exit."""
        self.close()
        self.backend, self.key, self.epoch = backend, key, epoch
        self._bound = getattr(backend, "worker_args", None)
        self._finalizer = weakref.finalize(owner, _close_backend, backend, os.getpid())
        _STARTED.add(self)

    def close(self) -> None:
        """Close the workers (nothing when none are started); safe to call more than once."""
        finalizer, self._finalizer = self._finalizer, None
        self.backend, self.key, self.epoch, self._bound = None, None, 0, None
        _STARTED.discard(self)
        if finalizer is not None:
            finalizer()  # closes the backend once, and unregisters it from the exit hook

    @property
    def alive(self) -> bool:
        """Whether workers are started."""
        return self.backend is not None


def close_all() -> None:
    """Close every model's workers in this process (for test harnesses that check no process is left)."""
    for live in list(_STARTED):
        live.close()
