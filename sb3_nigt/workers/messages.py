"""The typed messages between the main process and a worker (a process of the subprocess backend, a Ray actor).

Commands (main → worker): :class:`ComputeUnit`, :class:`StartRun`, :class:`Flush`, :class:`Close`. Messages
(worker → main): :class:`UnitDone`, :class:`UnitCancelled`, :class:`TrajectoryDone`, :class:`RunFlushed`,
:class:`Alive`, :class:`Failed`. None of them carries θ: a :class:`Theta` names the published version and how the
worker fetches it (a shared-memory slot, a Ray ObjectRef). Both sides decode with :func:`dispatch`.

The work itself: a :class:`~sb3_nigt.workers.rollout.WorkUnit` (the simulated clock) or an :class:`AgentRun`
(the real clock, the paper's agent-side accumulation); :class:`AgentReport` is the main-side event of a finished
trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, TypeVar

from sb3_nigt.workers.rollout import ObsNorm, TrajectoryStats, UnitResult, WorkUnit


@dataclass(frozen=True)
class AgentRun:
    """Real clock: agent ``agent`` samples trajectories ``first``, ``first + 1``, ... at the published θ until it is
    flushed or cancelled (paper, Algorithms 2 and 3: "agent j immediately starts another trajectory").

    Emulated times: trajectory 0 starts ``delay`` seconds after the agent receives the run; trajectory k takes
    ``max(durations[k] (× its steps if per_step), its compute time)`` seconds and is reported when it ends; the
    next one starts then.

    :param epoch: the collector's cancellation epoch.
    :param round_index: the round (job seeds (seed, round, agent, k)).
    :param agent: the agent.
    :param first: the index of its first trajectory.
    :param seed: the base seed.
    :param env_index: the agent's environment factory.
    :param horizon: H.
    :param gamma: γ.
    :param delay: seconds to wait before the first trajectory (emulated broadcast κ_i).
    :param durations: emulated seconds of its successive gradients (per step if ``per_step``); the last one
        repeats. Empty: no emulation.
    :param per_step: whether ``durations`` are per environment step.
    :param max_gradients: stop after this many and send their sum at once (Synchronized NIGT: 1); None: until
        flushed.
    :param upload_delay: seconds to wait before that early upload (emulated κ_i).
    """

    epoch: int
    round_index: int
    agent: int
    first: int
    seed: int
    env_index: int
    horizon: int
    gamma: float
    delay: float = 0.0
    durations: tuple[float, ...] = ()
    per_step: bool = False
    max_gradients: Optional[int] = None
    upload_delay: float = 0.0


@dataclass
class AgentReport:
    """A small event: agent ``stats.agent`` finished trajectory ``stats.index`` (no vector travels); ``seconds``:
    its duration measured on its worker (:class:`TrajectoryDone`), None where it was not measured."""

    epoch: int
    stats: TrajectoryStats
    seconds: Optional[float] = None


@dataclass(frozen=True)
class Theta:
    """Which θ a command runs at: the ``version``-th publication of its slot, fetched through ``handle`` (None for
    a shared-memory slot, an ObjectRef on Ray), with the round's observation statistics."""

    version: int
    handle: Any
    obs_norm: Optional[ObsNorm]


# ---------------------------------------------------------------------------------- main → worker
@dataclass(frozen=True)
class ComputeUnit:
    """Compute ``unit`` at ``theta`` and answer :class:`UnitDone` (or :class:`UnitCancelled`)."""

    unit: WorkUnit
    theta: Theta


@dataclass(frozen=True)
class StartRun:
    """Start ``run`` at the broadcast ``theta``; each finished trajectory is answered with a :class:`TrajectoryDone`."""

    run: AgentRun
    theta: Theta


@dataclass(frozen=True)
class Flush:
    """End agent ``agent``'s run of ``epoch``: send the sum of its first ``count`` trajectories ``upload_delay``
    seconds later as a :class:`RunFlushed` (nothing when ``count`` is 0)."""

    epoch: int
    agent: int
    count: int
    upload_delay: float = 0.0


@dataclass(frozen=True)
class Close:
    """End the worker's loop."""


# ---------------------------------------------------------------------------------- worker → main
@dataclass
class UnitDone:
    """A unit's sum Σ_k g_H(τ_k) (float64 ``(d,)``) and its trajectories' statistics."""

    result: UnitResult


@dataclass
class UnitCancelled:
    """A unit abandoned because its epoch was cancelled (no result follows)."""

    unit: WorkUnit


@dataclass
class TrajectoryDone:
    """A run's trajectory ended (in emulated time): its statistics, no vector, and ``seconds``, its wall duration
    measured on the worker: from when it could start (the run's start after its broadcast delay, or the end of the
    agent's previous trajectory) to its end (emulated waits included)."""

    epoch: int
    stats: TrajectoryStats
    seconds: Optional[float] = None


@dataclass
class RunFlushed:
    """A flushed run's sum, as the result of a unit with its ``first`` and ``count``; ``seconds`` include the
    upload delay."""

    result: UnitResult


@dataclass
class Alive:
    """A heartbeat of a busy worker that has said nothing for a while."""


@dataclass
class Failed:
    """The worker's loop stopped on an exception: the exception when it pickles (else None) and its traceback."""

    error: Optional[BaseException]
    text: str


R = TypeVar("R")


def dispatch(message: Any, handlers: Mapping[type, Callable[..., R]], side: str, *context: Any) -> R:
    """Call ``handler(message, *context)``, the handler of the message's type: the one decoder of both sides.

    :param side: who receives it, for the error (e.g. ``"worker"``).
    :raises ValueError: ``"<side>: unknown command <name>"`` for a message of no known type (a tagged tuple is
        named by its tag).
    """
    handler = handlers.get(type(message))
    if handler is None:
        name = message[0] if isinstance(message, tuple) and message and isinstance(message[0], str) else type(message).__name__
        raise ValueError(f"{side}: unknown command {name!r}; expected one of {sorted(h.__name__ for h in handlers)}")
    return handler(message, *context)


def picklable(exc: BaseException) -> Optional[BaseException]:
    """``exc`` if it survives a pickle round trip (to travel in a :class:`Failed`), else None."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None
