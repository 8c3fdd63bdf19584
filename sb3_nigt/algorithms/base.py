"""The NIGT outer loop (paper, Algorithm 1), written once, plus the Stable-Baselines3 glue.

Variants (Rennala, Malenia, ...) only choose the aggregation rule through :meth:`NIGTAlgorithm._make_rule`; the
update itself is :class:`~sb3_nigt.core.nigt.NIGTStep`, and the settings are checked by
:mod:`sb3_nigt.algorithms.config`.

Algorithm 1 (Cutkosky & Mehta 2020; Fatkhullin et al. 2023), ascent form::

    θ_{-1} = θ_0;  d_{-1} = Aggregate(θ_0, M_init)
    for t = 0, 1, ...:
        θ̃_t     = θ_t + ((1 − η)/η) (θ_t − θ_{t−1})     # implicit gradient transport
        g_t     = Aggregate(θ̃_t, M)
        d_t     = (1 − η) d_{t−1} + η g_t                # momentum
        θ_{t+1} = θ_t + α d_t / ‖d_t‖                    # normalized ascent step; ‖d_t‖ = 0 ⇒ no step
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional, TypeVar, Union

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm, maybe_make_env
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from sb3_nigt.algorithms.callbacks import count_environment_steps
from sb3_nigt.algorithms.config import (
    RENAMED,
    check_int,
    check_keywords,
    check_settings,
    parameter_names,
    renamed_overrides,
    with_defaults,
    with_old_names,
)
from sb3_nigt.algorithms.live_workers import LiveWorkers, worker_key
from sb3_nigt.algorithms.warn import user_stacklevel
from sb3_nigt.backends.contract import Backend, BackendOptions
from sb3_nigt.backends.inline import InlineBackend
from sb3_nigt.backends.registry import BACKENDS, hooks_of, make_backend
from sb3_nigt.clock.exact import ZERO, ExactTime
from sb3_nigt.clock.rounds import Arrival, Collector
from sb3_nigt.clock.timing import TimeCounters, TimeSpec, TimingModel
from sb3_nigt.clock.trace import TraceEvent
from sb3_nigt.core.aggregation import AggregationRule, RennalaAggregation
from sb3_nigt.core.errors import PolicyError
from sb3_nigt.core.nigt import NIGTStep
from sb3_nigt.policies import NIGTPolicy, check_action_space, check_observation_space, check_policy_kwargs, running_statistics_modules
from sb3_nigt.workers.env_factory import env_factories, is_heterogeneous, resolve_env
from sb3_nigt.workers.rollout import ObsNorm, TrajectoryStats

SelfNIGT = TypeVar("SelfNIGT", bound="NIGTAlgorithm")


class RoundKind(str, Enum):
    """What a collected round is for (a ``str``, so files saved with the plain strings still load)."""

    WARMUP = "warmup"  # the observation warm-up round: its gradient is discarded
    INITIAL = "initial"  # d_{−1} = Aggregate(θ_0, M_init), θ_{−1} = θ_0
    UPDATE = "update"  # g_t of Algorithm 1: the NIGT step
    ARRIVAL = "arrival"  # AFedPG: one arriving gradient, one server update


@dataclass
class PendingRound:
    """A collected round whose callbacks have not all fired, or whose update is not yet applied (saved with the
    model, so a checkpoint written mid-round resumes exactly).

    :param kind: a :class:`RoundKind` (or its string value, in older files).
    :param aggregate: the round's aggregate, float64 ``(d,)``.
    :param params: θ_0 for the initial round (θ_{−1} = θ_0), else None.
    :param arrivals: the counted gradients' statistics, in arrival order.
    :param arrival: the next arrival whose callbacks fire.
    :param step: the next step of that arrival.
    """

    kind: str
    aggregate: np.ndarray
    params: Optional[np.ndarray]
    arrivals: list[Arrival]
    arrival: int = 0
    step: int = 0


@contextmanager
def _terminate_like_interrupt() -> Iterator[None]:
    """Within ``learn``, SIGTERM raises ``SystemExit`` in the main thread, so the worker processes are closed as on
    Ctrl-C instead of being left behind (only from the main thread; elsewhere the handler is left alone). Further
    SIGTERMs are ignored until the clean-up (bounded: join, terminate, kill) is done and the previous handler is back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated SIGTERM must not cut the workers' clean-up short
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: Environment steps between two log dumps when ``learn``'s ``log_interval`` is None: SB3's PPO dumps once per
#: rollout of n_steps × n_envs = 2048 steps by default.
LOG_EVERY_STEPS = 2048


def _check_total_timesteps(total_timesteps: Any) -> int:
    """``learn``'s budget as an int: an integer >= 1, or an integral float (``1e5``, as SB3 users write it).

    :raises ValueError: starting ``total_timesteps:``, stating the accepted range.
    """
    if isinstance(total_timesteps, (float, np.floating)) and math.isfinite(total_timesteps) and float(total_timesteps).is_integer():
        total_timesteps = int(total_timesteps)
    return check_int(total_timesteps, "total_timesteps", 1)


def _loaded_backend(saved: Any) -> Union[str, Backend]:
    """The backend a loaded model runs on when ``load`` is not given one: inline, except a torch_distributed
    checkpoint loaded inside a ``torchrun`` job (``WORLD_SIZE`` set), whose ranks resume together as they trained
    (torchrun's restarts); a subprocess or Ray checkpoint never brings its worker processes back unasked."""
    distributed = saved == "torch_distributed" or type(saved).__name__ == "TorchDistributedBackend"
    return saved if distributed and "WORLD_SIZE" in os.environ else "inline"


def _obs_rms(vec_normalize: VecNormalize) -> RunningMeanStd:
    """VecNormalize's observation statistics: one RunningMeanStd, as NIGT refuses Dict observation spaces (whose
    statistics are a dict of them, the type SB3 annotates)."""
    rms = vec_normalize.obs_rms
    assert isinstance(rms, RunningMeanStd)
    return rms


def _refuse_nested_spaces(env: Any) -> None:
    """After SB3's DummyVecEnv refused ``env`` with ``NotImplementedError``: when the reason is an observation
    space that is not a flat Box (SB3 refuses nested Dict/Tuple spaces), raise our ``observation_space:`` error
    instead (one environment is built to look at its space); otherwise return, and the caller re-raises.

    :raises ValueError: starting ``observation_space:``.
    """
    for factory in env_factories(env):
        probe = factory()
        try:
            check_observation_space(probe.observation_space)
        finally:
            probe.close()


def _renamed_property(new: str, doc: str) -> property:
    """A property reading and writing the attribute ``new`` (an old argument name kept readable)."""
    return property(lambda self: getattr(self, new), lambda self, value: setattr(self, new, value), doc=doc)


def _step_property(field: str, doc: str) -> property:
    """A property reading and writing ``field`` of the model's :class:`NIGTStep` (the saved names of before)."""
    return property(lambda self: getattr(self._nigt, field), lambda self, value: setattr(self._nigt, field, value), doc=doc)


class NIGTAlgorithm(BaseAlgorithm):
    """Base class of the NIGT family: Algorithm 1 of the paper over a delay-aware asynchronous collector.

    :param policy: the policy, ``"MlpPolicy"`` (the paper's Gaussian tanh-squashed network) or a subclass of
        :class:`~sb3_nigt.policies.NIGTPolicy`; another algorithm's policy (``stable_baselines3.ppo.MlpPolicy``) is
        refused.
    :param env: one environment shared by all agents (an env id, a ``gymnasium.Env`` with a spec, a callable that
        builds one, or a VecEnv of copies of it), or one environment per agent (a list of env ids, of ``(env id,
        env_kwargs)`` pairs or of callables, or a VecEnv whose sub-env i is agent i's environment). VecEnvs may be
        wrapped in VecNormalize. Workers rebuild every environment from its id, spec or factory. The observation
        space must be a flat Box (one dimension, not an image) and the action space a Box with finite bounds.
    :param learning_rate: α, the length of each normalized step (> 0); a float or an SB3 schedule of the
        remaining progress, whose value is checked (finite, > 0; 0 only at the end of training, as linear
        schedules give) at every update, before θ changes.
    :param eta: η ∈ (0, 1], the weight of the new gradient in d_t = (1 − η) d_{t−1} + η g_t (and the lookahead's
        η); default 0.1; formerly ``momentum``.
    :param round_size: M >= 1, trajectories (gradients) per aggregation round (S for MaleniaNIGT; unused by
        SynchronizedNIGT and AFedPG, which warn when it is given); default 20; formerly ``batch_size``.
    :param initial_round_size: M_init >= 1, gradients of the initial round that forms d_{−1}; default M; formerly
        ``initial_batch_size``.
    :param horizon: H >= 1, environment steps per trajectory at most; default: the env's
        ``max_episode_steps``, else 1000.
    :param gamma: γ ∈ [0, 1], the discount factor.
    :param n_agents: n >= 1, the number of logical agents; default: the number of environments given (1 for a
        single environment).
    :param compute_times: h_i in seconds per gradient (or per step); see :class:`~sb3_nigt.clock.timing.TimingModel`.
    :param communication_times: κ_i in seconds per vector; see :class:`~sb3_nigt.clock.timing.TimingModel`.
    :param compute_time_unit: ``"gradient"`` (h_i per gradient, the paper's experiments), ``"step"`` (h_i per
        environment step of the sampled trajectory; biases the first-M rule towards short trajectories, see
        docs/time.md) or ``"horizon"`` (h_i per step times H whatever the length: the paper's theory, ḣ_i·H).
    :param outages: simulated clock only: agents taken away, ``{agent: T}`` (gone from T seconds on) or
        ``{agent: [(start, end), ...]}`` (``end`` may be ``math.inf``); see docs/time.md, "Outages". Rennala goes
        on without a down agent; Malenia and Synchronized NIGT wait for it to come back.
    :param clock: ``"simulated"`` (deterministic discrete-event clock) or ``"real"`` (physical arrival order).
    :param backend: ``"inline"`` (main process, the default: no start-up cost, works anywhere, as SB3's
        DummyVecEnv) or ``"subprocess"`` (local worker processes, faster on several cores).
    :param n_workers: processes of the subprocess backend; default min(n, CPU count) on the simulated clock and
        min(n, 4 × CPU count) on the real clock.
    :param worker_timeout: seconds a busy worker may stay silent before it is declared hung, killed and replaced
        (its work is resubmitted); None: never. The inline backend cannot detect a hang.
    :param max_failures: worker losses in a row after which ``learn`` raises ``WorkerError`` (θ, d_t and the
        clock stay at their last good values; the model can be saved and resumed).
    :param time_scale: real clock only: sleep h_i · time_scale and κ_i · time_scale seconds to emulate the
        timing model; None (default) injects no sleep. Needs ``backend="subprocess"`` with one worker per agent
        (the default ``n_workers`` then), so that a sleeping agent never holds up another one.
    :param start_method: multiprocessing start method of the subprocess backend, one of this platform's
        ``multiprocessing.get_all_start_methods()``; default forkserver, else spawn.
    :param stats_window_size: episodes averaged for ``rollout/ep_rew_mean`` (and per agent, in
        ``agent_ep_info_buffer[i]``, for ``rollout/ep_rew_mean_agent_{i}`` when agents have different environments).
    :param tensorboard_log: tensorboard log folder, or None.
    :param policy_kwargs: keyword arguments of the policy (``net_arch``, ``activation_fn``, ``min_std``, ...);
        SB3's ``net_arch=dict(pi=[...], vf=[...])`` uses ``pi`` and ignores ``vf``/``qf`` with a warning. A policy
        with BatchNorm layers (or other layers with running statistics) is refused.
    :param verbose: 0 silent, 1 training information (with ``backend="torch_distributed"``, on rank 0 only: the
        other ranks run with verbose 0).
    :param record_trace: record the clock's events (broadcasts, gradients, uploads) in ``model.trace``, a list of
        :class:`~sb3_nigt.clock.trace.TraceEvent` (not saved); see :mod:`sb3_nigt.timeline`.
    :param step_data: send each step's observation and environment action from the workers, so that callbacks
        find ``new_obs`` and ``actions`` in ``self.locals`` as with PPO (default True; 4 bytes per number per step
        in every message); False leaves them out. ``rewards``, ``dones`` and ``infos`` are always there
        (docs/rennala_nigt.md, "SB3 integration").
    :param seed: the seed of the policy's initialisation and of every job (seed, round, agent, index); an
        integer in [0, 2**32 - 1], or None.
    :param device: torch device of the main policy (default ``"cpu"``; workers always use the CPU).
    :param momentum: the old name of ``eta`` (still accepted, with a ``FutureWarning``; it wins over ``eta``).
    :param batch_size: the old name of ``round_size`` (still accepted, with a ``FutureWarning``; it wins over
        ``round_size``, as a command line's ``--hyperparams batch_size:4`` over a zoo file's ``round_size``).
    :param initial_batch_size: the old name of ``initial_round_size`` (still accepted, with a ``FutureWarning``;
        it wins over ``initial_round_size``).
    :raises ValueError: naming the argument, raised before any environment is built or any state changes where
        it can be: ``policy:`` for an unknown alias or a class that is not a ``NIGTPolicy``; ``policy_kwargs:``
        (or the key: ``net_arch:``, ``activation_fn:``, ``min_std:``) for bad policy arguments, and for a built
        policy with BatchNorm layers (``policy:`` when the policy class itself adds them);
        ``observation_space:`` for an observation space that is not a flat Box (Dict, Tuple, an image, a Box of
        several dimensions); ``action_space:`` for a discrete action space or infinite or NaN bounds; ``env:`` for
        agents' environments with different spaces (naming the agents) or a number of environments that is neither
        1 nor n; and any other argument outside its accepted range (``seed``, ``time_scale``, ``start_method``,
        ``compute_times`` above 1e15 seconds, ...).
    :warns UserWarning: for ``net_arch`` keys ``vf``/``qf`` (ignored).
    :warns FutureWarning: for an old argument name (``momentum``, ``batch_size``, ``initial_batch_size``), and for
        a round size given to an algorithm that does not use it.
    """

    #: Whether the aggregate weights agents by speed (fast agents count more). Such an algorithm optimises a
    #: speed-weighted objective when agents have different environments, and warns.
    speed_weighted = False
    #: Whether every agent gets its own θ (AFedPG) rather than one broadcast per round.
    per_agent_params = False
    #: Whether the aggregation rule reads M (``round_size``); SynchronizedNIGT and AFedPG do not.
    uses_round_size = True

    # The checked settings (sb3_nigt.algorithms.config), each stored under its own name and saved with the model.
    eta: float
    round_size: int
    initial_round_size: int
    horizon: int  # None until the environment's time limit gives the default
    gamma: float
    clock: str
    worker_timeout: Optional[float]
    max_failures: int
    n_workers: Optional[int]
    time_scale: Optional[float]
    start_method: Optional[str]
    step_data: bool

    # The old argument names, kept readable and writable (rl-zoo3, Optuna, scripts that read them).
    momentum = _renamed_property("eta", "The old name of ``eta``.")
    batch_size = _renamed_property("round_size", "The old name of ``round_size``.")
    initial_batch_size = _renamed_property("initial_round_size", "The old name of ``initial_round_size``.")
    # Algorithm 1's state, held by NIGTStep, under the names the model always had.
    momentum_buffer = _step_property("direction", "d_t, float64 ``(d,)``; None before the first round.")
    previous_params = _step_property("previous", "θ_{t−1}, float32 ``(d,)``; None before the first round.")

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": NIGTPolicy}
    policy: NIGTPolicy
    policy_class: type[NIGTPolicy]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """Refuse an unknown keyword argument before anything is built, naming the closest valid one.

        :raises UnknownArgumentError: (a ``TypeError``) naming the algorithm, the argument and its closest valid
            names, for a keyword that the algorithm's constructor does not take (``n_agent``, ``n_steps``).
        """
        check_keywords(cls.__name__, kwargs, parameter_names(cls.__init__))
        return super().__new__(cls)

    def __init__(
        self,
        policy: Union[str, type[NIGTPolicy]] = "MlpPolicy",
        env: Union[GymEnv, str, Callable, None] = None,
        learning_rate: Union[float, Schedule] = 2**-6,
        eta: Optional[float] = None,
        round_size: Optional[int] = None,
        initial_round_size: Optional[int] = None,
        horizon: Optional[int] = None,
        gamma: float = 0.99,
        n_agents: Optional[int] = None,
        compute_times: TimeSpec = "equal",
        communication_times: TimeSpec = 0.0,
        compute_time_unit: str = "gradient",
        outages: Optional[dict] = None,
        clock: str = "simulated",
        backend: Union[str, Backend] = "inline",
        n_workers: Optional[int] = None,
        worker_timeout: Optional[float] = 300.0,
        max_failures: int = 3,
        time_scale: Optional[float] = None,
        start_method: Optional[str] = None,
        record_trace: bool = False,
        step_data: bool = True,
        stats_window_size: int = 100,
        tensorboard_log: Optional[str] = None,
        policy_kwargs: Optional[dict[str, Any]] = None,
        verbose: int = 0,
        seed: Optional[int] = None,
        device: Union[th.device, str] = "cpu",
        momentum: Optional[float] = None,
        batch_size: Optional[int] = None,
        initial_batch_size: Optional[int] = None,
        _init_setup_model: bool = True,
    ):
        # Arguments first: nothing is built, opened or changed before they are all known to be valid.
        self._warn_if_round_size_unused(round_size, batch_size)
        settings = check_settings(with_defaults(with_old_names(
            dict(learning_rate=learning_rate, eta=eta, round_size=round_size, initial_round_size=initial_round_size,
                 horizon=horizon, gamma=gamma, n_agents=n_agents, seed=seed, clock=clock, worker_timeout=worker_timeout,
                 max_failures=max_failures, n_workers=n_workers, time_scale=time_scale, start_method=start_method,
                 stats_window_size=stats_window_size, verbose=verbose, step_data=step_data),
            dict(momentum=momentum, batch_size=batch_size, initial_batch_size=initial_batch_size),
        )))
        for name in ("eta", "round_size", "initial_round_size", "horizon", "gamma", "clock", "worker_timeout",
                     "max_failures", "n_workers", "time_scale", "start_method", "step_data"):
            setattr(self, name, settings[name])
        if self.initial_round_size is None:
            self.initial_round_size = self.round_size
        policy_class = self._check_policy(policy)
        policy_kwargs = check_policy_kwargs(policy_class, policy_kwargs)
        self.backend = self._check_backend(backend)
        if self.clock == "simulated" and self.time_scale is not None:
            warnings.warn("time_scale only applies to clock='real'; the simulated clock ignores it", stacklevel=user_stacklevel())
        self.record_trace = bool(record_trace)
        self.compute_times, self.communication_times = compute_times, communication_times
        self.compute_time_unit, self.outages = compute_time_unit, outages
        self._algorithm_name = type(self).__qualname__  # saved: load refuses another algorithm's file

        verbose = settings["verbose"] if self._is_primary() else 0  # torchrun: rank 0 prints, the others are quiet
        env, factories = self._check_environment(env, settings["n_agents"], verbose)
        self._init_state(settings["seed"])
        super().__init__(
            policy=policy_class, env=env, learning_rate=settings["learning_rate"], policy_kwargs=policy_kwargs,
            stats_window_size=settings["stats_window_size"], tensorboard_log=tensorboard_log, verbose=verbose,
            device=device, support_multi_env=True, seed=settings["seed"],
        )
        if self.env is not None:
            self._adopt_env(factories)
        if _init_setup_model:
            self._setup_model()

    # ----------------------------------------------------------------------------------------------- set-up
    def _warn_if_round_size_unused(self, round_size: Optional[int], batch_size: Optional[int]) -> None:
        """SynchronizedNIGT and AFedPG have no M: warn when one is given (it has no effect)."""
        given = "round_size" if round_size is not None else "batch_size" if batch_size is not None else None
        if given is not None and not self.uses_round_size:
            warnings.warn(
                f"{given}: {type(self).__name__} does not use it ({self._round_size_note}), so it has no effect; "
                "leave it out (passing it may be refused in a future version)",
                FutureWarning,
                stacklevel=user_stacklevel(),
            )

    #: Why ``round_size`` is unused, for the warning (algorithms with ``uses_round_size = False``).
    _round_size_note = ""

    def _check_backend(self, backend: Any) -> Union[str, Backend]:
        """A registered backend name or a Backend instance, and one that can run this algorithm on this clock.

        :raises ValueError: starting ``backend:``.
        """
        if not (isinstance(backend, Backend) or (isinstance(backend, str) and backend in BACKENDS)):
            raise ValueError(f"backend: must be one of {sorted(BACKENDS)} or a Backend instance, got {backend!r}")
        # A backend that cannot run this algorithm or clock says so (e.g. torch_distributed).
        hooks_of(backend).check_algorithm(type(self).__name__, clock=self.clock, per_agent_params=self.per_agent_params)
        return backend

    def _check_environment(self, env: Any, n_agents: Optional[int], verbose: int) -> tuple[Union[GymEnv, str, None], Optional[list[Callable]]]:
        """Resolve ``env`` (:func:`~sb3_nigt.workers.env_factory.resolve_env`), check its spaces, set n, and check what
        depends on n (the time specifications, outages, the real-clock emulation, the number of environments).
        An environment built here is closed if a check fails.

        :return: ``(env for BaseAlgorithm, the workers' factories)``.
        :raises ValueError: naming the argument (``observation_space:``, ``action_space:``, ``env:``,
            ``compute_times:``, ``outages:``, ``time_scale:``, ``n_workers:``, ...).
        """
        given = env
        try:
            env, factories = resolve_env(env)
        except NotImplementedError:  # SB3's DummyVecEnv refuses nested Dict/Tuple spaces this way
            _refuse_nested_spaces(given)
            raise
        try:
            if isinstance(env, str):
                env = maybe_make_env(env, verbose)  # as SB3 would, so that the spaces are checked before SB3 sees them
            if env is not None:  # a flat Box observation space, a Box action space with finite bounds
                check_action_space(env.action_space)
                check_observation_space(env.observation_space)
            self.n_agents = n_agents if n_agents is not None else len(factories) if factories else 1
            self._check_real_clock_emulation()
            # Validate the time specifications now, before SB3 wraps the environment (_setup_model builds the
            # clock's TimingModel once d, the number of parameters, is known).
            TimingModel(self.n_agents, self.compute_times, self.communication_times, self.compute_time_unit,
                        horizon=self.horizon, outages=self.outages)
            self._check_outages()
            if factories is not None:
                self._check_env_count(factories, env)
        except BaseException:
            if env is not None and env is not given and hasattr(env, "close"):
                env.close()  # built here: nobody else will close it
            raise
        return env, factories

    def _check_real_clock_emulation(self) -> None:
        """Emulated times on the real clock (``time_scale``) need one worker process per agent.

        :raises ValueError: starting ``time_scale:`` (inline backend) or ``n_workers:`` (fewer workers than agents).
        """
        if self.clock != "real" or not self.time_scale:
            return
        if self.backend == "inline" or isinstance(self.backend, InlineBackend):
            raise ValueError(
                "time_scale: the inline backend runs the agents' work one job after another, so it cannot "
                "emulate agents that compute at the same time; use backend='subprocess' (one worker process per agent)"
            )
        if self.n_workers is not None and self.n_workers < self.n_agents:
            raise ValueError(
                f"n_workers: emulating times on the real clock (time_scale) needs one worker per agent, "
                f"n_workers >= n_agents = {self.n_agents}, got {self.n_workers}; leave n_workers=None for that default"
            )

    def _check_outages(self) -> None:
        """Outages are modelled on the simulated clock, with durations known in advance, for round-based algorithms.

        :raises ValueError: starting ``outages:``.
        """
        if not self.outages:
            return
        if self.clock != "simulated":
            raise ValueError("outages: only the simulated clock models outages; on the real clock a lost worker is the outage")
        if self.compute_time_unit == "step":
            raise ValueError("outages: need durations known in advance, compute_time_unit 'gradient' or 'horizon', not 'step'")
        if self.per_agent_params:
            raise ValueError(f"outages: not modelled for {type(self).__name__}'s per-arrival server")

    def _init_state(self, seed: Optional[int]) -> None:
        """The training state, saved with the model: Algorithm 1's θ_{t−1} and d_t, the clock, the round counter
        of the job seeds, and the statistics."""
        self._nigt = NIGTStep()  # θ_{t−1} and d_t
        self._clock: ExactTime = ZERO  # the simulated clock, exact (docs/time.md, "Exact time")
        self.time_counters = TimeCounters.zeros(self.n_agents)  # the ``counter`` of time specifications
        self.trace: list[TraceEvent] = []
        self._pending: Optional[PendingRound] = None  # a collected round not yet used (see PendingRound)
        self.n_rounds = 0
        self.n_communications = 0  # vectors sent between the server and the agents (broadcasts and uploads)
        self.bytes_sent = 0  # their bytes: θ as float32 to each agent, uploads as float64
        self.round_stats: dict[str, Union[float, str]] = {}
        self.last_counts: Optional[np.ndarray] = None
        self._base_seed = int(seed) if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        self._env_factories: Optional[list[Callable]] = None
        # Agent i's last ``stats_window_size`` episodes ({"r", "l", "t", "agent"}), as SB3's ep_info_buffer.
        self.agent_ep_info_buffer: Optional[list[deque]] = None
        self._agent_monitors: list[Optional[Monitor]] = []

    def _adopt_env(self, factories: Optional[list[Callable]]) -> None:
        """After SB3 wrapped the environment: the workers' factories, H from the env's time limit when not given,
        and a warning for VecNormalize's reward normalization (the workers use raw rewards)."""
        assert self.env is not None
        vec_normalize = self._vec_normalize_env
        if vec_normalize is not None and vec_normalize.norm_reward:
            warnings.warn(
                "VecNormalize(norm_reward=True): workers use raw rewards in g_H; the normalized step α d/‖d‖ "
                "does not depend on the reward scale. Observation normalization is applied and its statistics merged.",
                stacklevel=user_stacklevel(),
            )
        self._env_factories = factories
        if self.horizon is None:
            spec = self.env.get_attr("spec", indices=[0])[0]
            steps = getattr(spec, "max_episode_steps", None)
            self.horizon = int(steps) if steps else 1000

    def _adopt_saved_names(self, overrides: dict[str, Any]) -> None:
        """After ``load`` filled the model from a file saved before the renaming: move its old fields
        (``momentum``, ``batch_size``, ``initial_batch_size``, ``momentum_buffer``, ``previous_params``) to where
        they live now, unless ``overrides`` (``load``'s keyword arguments) set the new name; and read a pending
        round's kind as a :class:`RoundKind`."""
        state = self.__dict__
        for old, new in RENAMED.items():
            if old in state:
                value = state.pop(old)
                if new not in overrides:
                    setattr(self, new, value)
        if "momentum_buffer" in state or "previous_params" in state:
            self._nigt = NIGTStep(state.pop("momentum_buffer", None), state.pop("previous_params", None))
        if self._pending is not None:
            self._pending.kind = RoundKind(self._pending.kind)

    @classmethod
    def _check_policy(cls, policy: Any) -> type[NIGTPolicy]:
        """The policy class of ``policy``: an alias of ``policy_aliases`` or a subclass of ``NIGTPolicy``.

        Another algorithm's policy (``stable_baselines3.ppo.MlpPolicy``, an actor-critic) has neither the
        pre-squash ``log_prob`` nor the NumPy forward the workers use, so it is refused.

        :raises PolicyError: (a ``ValueError``) starting ``policy:``, stating which policies are accepted.
        """
        accepted = f"one of {sorted(cls.policy_aliases)} or a subclass of sb3_nigt.NIGTPolicy"
        if isinstance(policy, str):
            if policy not in cls.policy_aliases:
                raise PolicyError(f"policy: unknown policy {policy!r}; {cls.__name__} accepts {accepted}")
            return cls.policy_aliases[policy]  # type: ignore[return-value]
        if isinstance(policy, type) and issubclass(policy, NIGTPolicy):
            return policy
        name = f"{policy.__module__}.{policy.__qualname__}" if isinstance(policy, type) else repr(policy)
        raise PolicyError(
            f"policy: {cls.__name__} accepts {accepted} (the Gaussian tanh-squashed policy whose log-probability the "
            f"gradient needs), got {name}; policies of other algorithms (e.g. stable_baselines3.ppo.MlpPolicy) do not work"
        )

    def _check_saved_algorithm(self) -> None:
        """After ``load`` filled the model from a file: the file must have been saved by this class or a class it
        derives from (files saved before the class name was recorded carry none and are accepted).

        :raises ValueError: starting ``path:``, naming both classes.
        """
        saved = self.__dict__.get("_algorithm_name")
        own = type(self).__qualname__
        if saved is not None and saved not in {klass.__qualname__ for klass in type(self).__mro__}:
            raise ValueError(
                f"path: this file was saved by {saved}, not by {own}; load it with {saved}.load "
                f"(a {saved} model's state does not fit {own})"
            )
        self._algorithm_name = own

    def _warn_if_budget_too_small(self, total_timesteps: int) -> None:
        """Warn when ``learn`` will end before the first update: the initial round (and the observation warm-up
        round, if fresh VecNormalize statistics need one) needs at least as many environment steps as are left.

        The rule: every gradient takes at least one environment step, and the rounds before the first update need
        at least N gradients (Rennala: M_init; Malenia: max(n, M_init); Synchronized: n; plus M_init for a warm-up
        round); if ``total_timesteps − num_timesteps <= N``, the budget is spent before the first update. AFedPG
        updates on every gradient and never warns. A budget above N may still be spent before the first update
        when trajectories are long: :meth:`_warn_if_no_update` then warns when ``learn`` ends.

        :param total_timesteps: the step count ``learn`` trains up to (what SB3's ``_setup_learn`` returns).
        :warns UserWarning: naming ``round_size``/``initial_round_size`` (or ``n_agents``), the rule, and the
            environment steps the first update needs (:meth:`_first_update_steps`).
        """
        self._budget_warned = False
        if self.per_agent_params or self._nigt.direction is not None or self._pending is not None:
            return
        left = int(total_timesteps) - int(self.num_timesteps)
        needed = self._min_round_gradients(self._make_rule(self.initial_round_size), left)
        if self._needs_observation_warmup():
            needed += self.initial_round_size
        if needed >= left:
            self._budget_warned = True  # learn's end does not warn again
            warnings.warn(
                f"total_timesteps: {left} environment steps are left, but the rounds before the first update need at "
                f"least {needed} gradients (initial_round_size={self.initial_round_size}, round_size={self.round_size}, "
                f"n_agents={self.n_agents}), each of at least one environment step, so learn will end before the first "
                f"update and θ will not change. {self._first_update_steps()}; lower round_size or initial_round_size, "
                "or raise total_timesteps",
                UserWarning,
                stacklevel=user_stacklevel(),
            )

    def _first_update_steps(self) -> str:
        """What the first update costs, in environment steps, for the budget warnings: the observation warm-up
        round (fresh VecNormalize statistics only) and the initial round of M_init trajectories come first, then one
        round of M trajectories, each trajectory of at most H steps (fewer when episodes end earlier)."""
        trajectories = self._min_round_gradients(self._make_rule(self.initial_round_size), 10**9)  # as the warning counts
        rounds = [f"the initial round (M_init={self.initial_round_size}: at least {trajectories} trajectories)"]
        if self._needs_observation_warmup():
            rounds.insert(0, f"the observation warm-up round of M_init={self.initial_round_size} trajectories")
            trajectories += self.initial_round_size
        first = self._min_round_gradients(self._make_rule(self.round_size), 10**9)
        rounds.append(f"then one update round (at least {first} trajectories)")
        trajectories += first
        return (
            f"The first update needs {', '.join(rounds)}, each trajectory of up to H={self.horizon} steps: "
            f"{trajectories * self.horizon} environment steps when every trajectory runs H steps "
            "(total_timesteps must exceed the steps of the rounds before the update round)"
        )

    def _warn_if_no_update(self, total_timesteps: int) -> None:
        """After a budget ran out (not a callback's stop): warn if the model has still made no update, stating the
        steps the rounds before the first update took and what the first update needs.

        :warns UserWarning: starting ``total_timesteps:``, at the user's line.
        """
        if self.per_agent_params or self._n_updates > 0 or getattr(self, "_budget_warned", False):
            return
        warnings.warn(
            f"total_timesteps: learn ended at {self.num_timesteps} environment steps (budget {total_timesteps}) "
            f"without any update: θ is still θ_0. {self._first_update_steps()}; raise total_timesteps, or lower "
            "round_size or initial_round_size",
            UserWarning,
            stacklevel=user_stacklevel(),
        )

    @staticmethod
    def _min_round_gradients(rule: AggregationRule, cap: int) -> int:
        """The fewest gradients that complete a round of ``rule`` (fed one agent after another, which is the
        fewest for Rennala, Malenia and Synchronized), counted up to ``cap`` + 1 (beyond, the exact number does not
        matter to the caller)."""
        count = 0
        while not rule.done() and count <= cap:
            added = 0
            for agent in range(rule.n_agents):  # every agent starts one gradient; more only if the rule wants more
                if rule.done() or count > cap:
                    break
                if rule.counts[agent] == 0 or rule.wants_more(agent):
                    rule.add(agent)
                    count, added = count + 1, added + 1
            if not added:
                break
        return count

    def _setup_model(self) -> None:
        """Build the policy and the timing model; starts no process and reads no environment."""
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self._check_saved_algorithm()
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs)
        statistics = running_statistics_modules(self.policy)
        if statistics:
            argument = "policy_kwargs" if self.policy_class is NIGTPolicy else "policy"
            raise ValueError(
                f"{argument}: the policy has layers with batch or running statistics ({', '.join(statistics)}); NIGT "
                "refuses them: their output depends on the batch, on the training/evaluation mode and on statistics "
                "that forward passes update, while workers sample one observation at a time and the gradient is one "
                "batched pass per trajectory, so the sampled actions and the scored log-probabilities would not come "
                "from the same policy. Use a network without BatchNorm (LayerNorm has no running statistics)"
            )
        self.policy = self.policy.to(self.device)
        self.policy.set_training_mode(False)
        self.timing = TimingModel(
            self.n_agents, self.compute_times, self.communication_times, self.compute_time_unit,
            n_params=self.n_params, seed=self._base_seed, horizon=self.horizon, outages=getattr(self, "outages", None),
        )

    @property
    def simulated_time(self) -> float:
        """Seconds on the clock since the model was created (float; the exact value is ``simulated_time_exact``)."""
        return float(self._clock)

    @property
    def simulated_time_exact(self) -> ExactTime:
        """The simulated clock as an exact number (:class:`~sb3_nigt.clock.exact.ExactTime`), in seconds."""
        return self._clock

    def _update_current_progress_remaining(self, num_timesteps: int, total_timesteps: int) -> None:
        """SB3's remaining progress 1 − steps/total, clamped at 0: the last round overshoots the budget, and a
        schedule evaluated at a negative progress could give α < 0, a full normalized step against d_t."""
        self._current_progress_remaining = max(0.0, 1.0 - float(num_timesteps) / float(total_timesteps))

    @property
    def n_params(self) -> int:
        """d, the number of policy parameters."""
        return sum(p.numel() for p in self.policy.parameters())

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + ["timing", "_env_factories", "agent_ep_info_buffer", "_agent_monitors", "trace",
                                                  "_workers"]

    def _check_env_count(self, factories: list[Callable], env: Any) -> None:
        """One environment for all agents, or one per agent; warns if a speed-weighted rule gets different ones."""
        if len(factories) not in (1, self.n_agents) and is_heterogeneous(factories):
            if isinstance(env, VecEnv):
                env.close()
            raise ValueError(
                f"env: {len(factories)} different environments were given for n_agents={self.n_agents}; "
                "give one environment shared by all agents, or exactly one per agent"
            )
        if self.speed_weighted and len(factories) > 1 and is_heterogeneous(factories):
            warnings.warn(
                f"{type(self).__name__} with agents in different environments: its aggregate weights each agent by "
                "its speed (fast agents contribute more gradients), so it optimises a speed-weighted objective, not "
                "the equal-weighted J = (1/n) Σ_i J_i. Use MaleniaNIGT for an unbiased estimate.",
                stacklevel=user_stacklevel(),
            )

    def set_env(self, env: Any, force_reset: bool = True) -> None:
        """Set new environments (same spaces, one shared or one per agent); the workers kept since the last ``learn``
        are closed, and the next ``learn`` starts new ones with these environments.

        :param env: any form accepted by the constructor's ``env``.
        :raises ValueError: as the constructor, for spaces or a number of environments that do not fit.
        """
        env, factories = resolve_env(env)
        if factories is None:  # env=None
            raise TypeError("env: set_env needs an environment, got None")
        self._check_env_count(factories, env)
        super().set_env(env, force_reset)
        self.close()  # the workers built the old environments: the next learn starts new ones
        self._env_factories = factories

    @classmethod
    def load(cls, path: Any, env: Any = None, device: Union[th.device, str] = "auto", custom_objects: Optional[dict[str, Any]] = None,
             print_system_info: bool = False, force_reset: bool = True, **kwargs: Any):
        """Load a saved model (SB3's ``load``); ``env`` may also be an env id or a list of per-agent environments.

        The file must have been saved by this class (or a class it derives from): a RennalaNIGT file loaded with
        ``AFedPG.load``, or a PPO file, is refused. Files saved before the class name was recorded still load.

        The loaded model runs on the inline backend, whatever backend it was trained with, unless ``backend=`` is
        given: a checkpoint trained with ``backend="subprocess"`` or ``"ray"`` then works in a notebook or in a
        script without an ``if __name__ == "__main__":`` guard (pass ``backend="subprocess"`` to get the worker
        processes back). Only a ``torch_distributed`` checkpoint loaded inside a ``torchrun`` job (``WORLD_SIZE``
        set) keeps its backend, so restarted ranks resume together.

        :param path: the saved zip file (a path or a file-like object).
        :param env: the environment to train on, as the constructor's ``env``; None: the model can only predict.
        :param kwargs: settings to override (checked as the constructor's; NumPy scalars accepted; the old names
            ``momentum``, ``batch_size`` and ``initial_batch_size`` are accepted with a ``FutureWarning``);
            ``backend`` defaults to ``"inline"`` (see above).
        :raises UnknownArgumentError: (a ``TypeError``) for an override that is not a constructor argument, naming
            the closest valid ones.
        :raises ValueError: starting ``path:`` for a file saved by another algorithm (naming both classes) or with
            another library's policy; naming the argument for an override outside its accepted range.
        """
        check_keywords(cls.__name__, kwargs, parameter_names(cls.__init__), where=".load")
        kwargs = renamed_overrides(kwargs)
        env, _ = resolve_env(env)
        if isinstance(env, str):
            env = gym.make(env)
        try:
            model = super().load(path, env=env, device=device, custom_objects=custom_objects,
                                 print_system_info=print_system_info, force_reset=force_reset, **kwargs)
        except PolicyError as exc:  # the only policy at load is the file's: another library's algorithm
            raise ValueError(
                f"path: this file was not saved by {cls.__name__} (its policy is not a NIGTPolicy); load it with "
                f"the algorithm that saved it. {exc}"
            ) from exc
        model._adopt_saved_names(kwargs)
        model.backend = model._check_backend(kwargs["backend"] if "backend" in kwargs else _loaded_backend(model.backend))
        return model

    def _make_rule(self, round_size: int) -> AggregationRule:
        """The aggregation rule of one round with round size ``round_size`` (M, S or M_init)."""
        raise NotImplementedError

    def _agent_env_index(self) -> list[int]:
        """For each agent, the index of its environment factory (one shared environment: all use factory 0)."""
        factories = self._env_factories or []
        if len(factories) > 1 and is_heterogeneous(factories):
            if len(factories) != self.n_agents:
                raise ValueError(
                    f"env: {len(factories)} different environments for n_agents={self.n_agents}; give one per agent"
                )
            return list(range(self.n_agents))
        return [0] * self.n_agents

    @property
    def heterogeneous(self) -> bool:
        """Whether the agents have different environments (one per agent)."""
        return self._env_factories is not None and len(set(self._agent_env_index())) > 1

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        """SB3's callback set-up; then every progress bar counts one environment step per ``on_step`` (our
        ``on_step`` fires once per environment step, not once per ``VecEnv.step``)."""
        callback = super()._init_callback(callback, progress_bar)
        count_environment_steps(callback)
        return callback

    def _is_primary(self) -> bool:
        """Whether this process owns logging and saving: always, except on the ranks other than 0 of a backend
        with an ``is_primary`` hook (torch_distributed, docs/torch_distributed.md)."""
        return bool(hooks_of(self.backend).is_primary())

    def save(self, path: Any, exclude: Optional[Iterable[str]] = None, include: Optional[Iterable[str]] = None) -> None:
        """SB3's ``save``; a no-op on the ranks other than 0 of the torch_distributed backend (rank 0 writes the
        file; every rank holds the same state)."""
        if self._is_primary():
            super().save(path, exclude=exclude, include=include)

    def _make_collector(self, seed: Optional[int] = None, counters: Optional[TimeCounters] = None) -> Collector:
        """A collector on a new, bound, unstarted backend (``estimate_gradient``; ``learn`` keeps its workers)."""
        worker_args, options = self._worker_setup()
        return self._collector_on(make_backend(self.backend, worker_args, options), seed, counters)

    def _worker_setup(self) -> tuple[dict[str, Any], BackendOptions]:
        """What the workers are built from: the :class:`~sb3_nigt.workers.rollout.GradientWorker` arguments and the
        backend's options.

        :raises ValueError: starting ``env:`` when the model has no environment.
        """
        if self._env_factories is None:
            raise ValueError("env: this model has no environment; pass one at load(..., env=...) or with set_env()")
        worker_args = dict(
            env_factories=self._env_factories, policy_class=self.policy_class, observation_space=self.observation_space,
            action_space=self.action_space, policy_kwargs=self.policy_kwargs, step_data=bool(getattr(self, "step_data", True)),
            buffers={name: buffer.detach().cpu().clone() for name, buffer in self.policy.named_buffers()},
        )
        n_workers = self.n_workers
        if self.backend != "inline":
            if n_workers is None:
                cpus = os.cpu_count() or 1
                if self.clock == "real" and self.time_scale:
                    n_workers = self.n_agents  # emulated times: every agent sleeps in a process of its own
                else:
                    # Real clock: one process per agent (up to 4 per core) so agents compute concurrently.
                    n_workers = min(self.n_agents, 4 * cpus) if self.clock == "real" else min(self.n_agents, cpus)
        options = BackendOptions(
            n_workers=n_workers, start_method=self.start_method, pin_agents=self.clock == "real" and bool(self.time_scale),
            agent_slots=self.n_agents if self.per_agent_params else 0, worker_timeout=self.worker_timeout,
            max_failures=self.max_failures,
        )
        return worker_args, options

    def _collector_on(self, backend: Backend, seed: Optional[int] = None, counters: Optional[TimeCounters] = None) -> Collector:
        """A collector of this model's clock, times and seeds on ``backend`` (bound; started or not)."""
        if counters is None:
            if len(self.time_counters.compute) != self.n_agents:
                self.time_counters = TimeCounters.zeros(self.n_agents)
            counters = self.time_counters
        return Collector(
            backend, self.timing, self.clock, self.horizon, self.gamma, self._base_seed if seed is None else int(seed),
            self._agent_env_index(), self.time_scale, counters, self.record_trace,
        )

    def _live_workers(self) -> LiveWorkers:
        """The workers kept between ``learn`` calls (made on first use: models built by SB3's ``load`` too)."""
        live = self.__dict__.get("_workers")
        if live is None:
            live = self._workers = LiveWorkers()
        return live

    def _started_collector(self) -> Collector:
        """The collector of a ``learn`` call: on the workers of the last call when they were built from the same
        arguments (their cancellation epoch continues), else on new workers, started now (the old ones closed).

        :raises WorkerError: or the backend's start error, when workers cannot be started (nothing is left open).
        """
        worker_args, options = self._worker_setup()
        key = worker_key(self.backend, worker_args, options)
        live = self._live_workers()
        backend = live.reusable(key)
        if backend is not None:
            collector = self._collector_on(backend)
            collector.epoch = live.epoch
            return collector
        backend = make_backend(self.backend, worker_args, options)
        collector = self._collector_on(backend)
        try:
            collector.start()
        except BaseException:
            collector.close()
            raise
        live.adopt(self, backend, key)
        return collector

    def close(self) -> None:
        """Stop the workers (processes, Ray actors, the inline worker) and their environments, kept since the last
        ``learn``. The next ``learn`` starts new ones; θ, d_t, the clock and the statistics are kept. Safe to call
        more than once. The model's own ``env`` (the main-process VecEnv) is not closed: close it with
        ``model.get_env().close()`` as with any SB3 model. Workers are also closed when the model is
        garbage-collected and at interpreter exit."""
        live = self.__dict__.get("_workers")
        if live is not None:
            live.close()

    # ------------------------------------------------------------------------------------------- parameters
    def get_flat_params(self) -> np.ndarray:
        """θ as a flat float32 vector, shape ``(d,)``, in ``parameters_to_vector`` order."""
        return parameters_to_vector(self.policy.parameters()).detach().cpu().numpy().astype(np.float32)

    def set_flat_params(self, params: np.ndarray) -> None:
        """Load θ from a flat vector of shape ``(d,)``."""
        with th.no_grad():
            vector_to_parameters(th.as_tensor(np.asarray(params, dtype=np.float32), device=self.device), self.policy.parameters())

    def estimate_gradient(
        self, n_rounds: int = 1, round_size: Optional[int] = None, params: Optional[np.ndarray] = None, seed: Optional[int] = None,
        batch_size: Optional[int] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run ``n_rounds`` independent aggregation rounds at one θ and return their aggregates, without any update.

        Each round is Aggregate(θ, M) of the algorithm's rule (paper, Algorithm 2 for Rennala, 3 for Malenia), on
        the model's agents, times and clock, starting at simulated time 0. The model (θ, d_t, the clock, the
        counters) is left unchanged. Useful to check unbiasedness or to measure the variance of the estimator.

        :param n_rounds: rounds to run (>= 1); round r uses the job seeds of round index r.
        :param round_size: M (>= 1); default the model's ``round_size``.
        :param params: θ, float, shape ``(d,)``; default the current policy parameters θ_t.
        :param seed: base seed of the jobs; default the model's seed.
        :param batch_size: the old name of ``round_size`` (with a ``FutureWarning``).
        :return: ``(gradients, counts)``: the aggregates g (float64, shape ``(n_rounds, d)``) and the counts M_i
            (int64, shape ``(n_rounds, n)``).
        :raises ValueError: for ``n_rounds`` or ``round_size`` < 1, ``params`` of the wrong shape, no environment,
            or a NaN reward.
        """
        n_rounds = check_int(n_rounds, "n_rounds", 1)
        given = with_old_names(dict(round_size=round_size), dict(batch_size=batch_size))
        name, value = next(iter(given.items()))
        round_size = self.round_size if value is None else check_int(value, name, 1)
        theta = self.get_flat_params() if params is None else np.asarray(params, dtype=np.float64).reshape(-1)
        if theta.shape != (self.n_params,):
            assert params is not None  # θ_t always has d entries
            raise ValueError(f"params: expected shape ({self.n_params},), got {np.shape(params)}")
        if self.env is None:
            raise ValueError("env: this model has no environment; pass one at load(..., env=...) or with set_env()")
        gradients = np.zeros((n_rounds, self.n_params), dtype=np.float64)
        counts = np.zeros((n_rounds, self.n_agents), dtype=np.int64)
        collector = self._make_collector(seed, TimeCounters.zeros(self.n_agents))
        with _terminate_like_interrupt():  # SIGTERM closes the workers here too, as in learn()
            try:
                collector.start()
                for r in range(n_rounds):
                    collector.counters = TimeCounters.zeros(self.n_agents)  # every round starts a fresh clock at 0
                    result = collector.collect(theta.astype(np.float32), self._make_rule(round_size), r, ZERO, self._obs_norm())
                    gradients[r], counts[r] = result.aggregate, result.counts
            finally:
                collector.close()
        return gradients, counts

    # --------------------------------------------------------------------------------------------- training
    def _obs_norm(self) -> Optional[ObsNorm]:
        vec_normalize = self._vec_normalize_env
        if vec_normalize is None or not vec_normalize.norm_obs:
            return None
        rms = _obs_rms(vec_normalize)
        return ObsNorm(np.array(rms.mean, dtype=np.float64), np.array(rms.var, dtype=np.float64), float(vec_normalize.clip_obs),
                       float(vec_normalize.epsilon))

    def _collect_round(self, collector: Collector, params: np.ndarray, rule: AggregationRule, callback: BaseCallback,
                       kind: RoundKind) -> bool:
        """One aggregation round of ``rule`` at ``params``, then the callbacks for every environment step it consumed
        (``on_rollout_start``, ``on_step``s, ``on_rollout_end``). Returns False if a callback asked to stop.

        The round's outcome waits in ``self._pending`` (saved with the model) until an ``_apply_*`` method uses it,
        so a checkpoint written by a callback mid-round resumes exactly where it was written.

        :param params: θ̃_t (or θ_0), float ``(d,)``; sent to the agents as float32.
        :param kind: what the round is for: the update's g_t, d_{−1}, or the observation warm-up.
        :raises ValueError: starting ``gradient:`` for a non-finite aggregate (θ is unchanged).
        """
        callback.on_rollout_start()
        result = collector.collect(params.astype(np.float32), rule, self.n_rounds, self._clock, self._obs_norm())
        if not np.all(np.isfinite(result.aggregate)):
            raise ValueError(
                f"gradient: the aggregate of round {self.n_rounds} has non-finite entries (NaN or inf); "
                "training stopped before the update, θ is unchanged"
            )
        self.n_rounds += 1
        self._clock = result.end_time
        if self.record_trace:
            self.trace.extend(result.trace)
        vec_normalize = self._vec_normalize_env
        if vec_normalize is not None and vec_normalize.training:
            for moments in result.obs_moments:
                _obs_rms(vec_normalize).update_from_moments(moments.mean, moments.var, moments.count)
        self.last_counts = result.counts  # M_i of the round, int64, shape (n,)
        # What the modelled agents send: θ to each agent, and one vector per contributing agent (on the simulated
        # clock the round is computed in lockstep batches across agents, but each agent is modelled as sending ḡ_i).
        self.n_communications += self.n_agents + result.vectors
        self.bytes_sent += self.n_agents * 4 * self.n_params + result.vectors * 8 * self.n_params
        self.round_stats = {
            "round_seconds": result.duration,
            "gradients_per_round": int(result.counts.sum()),
            "agents_contributing": int(np.count_nonzero(result.counts)),
            "contributors": " ".join(str(int(a)) for a in np.flatnonzero(result.counts)),
            "agents_lost": len(result.lost),  # agents whose worker died this round (their work was redone)
            "steps_per_round": result.n_steps,
        }
        if kind is RoundKind.WARMUP:
            self.round_stats["observation_warmup"] = 1  # for callbacks at this round's on_rollout_end
            self._warmup_unlogged = True  # and in the next log written
        self._pending = PendingRound(kind, result.aggregate, params.copy() if kind is RoundKind.INITIAL else None, result.arrivals)
        return self._replay_pending(callback)

    def _replay_pending(self, callback: BaseCallback) -> bool:
        """Fire the pending round's callbacks from where they stopped; False if a callback asked to stop."""
        pending = self._pending
        assert pending is not None
        while pending.arrival < len(pending.arrivals):
            if not self._replay_arrival(pending.arrivals[pending.arrival], callback, pending):
                return False
            pending.arrival, pending.step = pending.arrival + 1, 0
        callback.on_rollout_end()
        return True

    def _take_pending(self) -> PendingRound:
        """The pending round, now used (no longer pending)."""
        pending = self._pending
        assert pending is not None
        self._pending = None
        return pending

    def _apply_warmup(self, total_timesteps: int) -> None:
        """Use the warm-up round: nothing (its gradient is discarded; the statistics were merged on collection)."""
        self._take_pending()

    def _apply_initial(self, total_timesteps: int) -> None:
        """Use the initial round: the first step, d_{−1} = Aggregate(θ_0, M_init) and θ_{−1} = θ_0."""
        pending = self._take_pending()
        assert pending.params is not None  # the initial round keeps θ_0
        self._nigt.start(pending.params, pending.aggregate)

    def _apply_update(self, total_timesteps: int) -> None:
        """Use an update round: the NIGT step with g_t = its aggregate, at the remaining progress of now."""
        pending = self._take_pending()
        self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
        self._nigt_step(pending.aggregate)

    def _replay_arrival(self, arrival: Arrival, callback: BaseCallback, pending: Optional["PendingRound"] = None) -> bool:
        """Count one used gradient's trajectory: the episode buffers, then ``on_step`` once per environment step,
        from ``pending.step`` on when resuming.

        Before each ``on_step`` the callback's locals hold PPO's per-step names for one environment: ``rewards``
        (float32 ``(1,)``), ``dones`` (bool ``(1,)``, True at the trajectory's last step), ``infos`` (a list of the
        environment's own info dict; the last one also carries ``episode``, ``TimeLimit.truncated`` and
        ``terminal_observation``, as SB3's Monitor and VecEnv add them), and ``agent``; with ``step_data=True``
        (the default) also ``new_obs`` (float32 ``(1, *obs_shape)``, normalized as the policy sees it under
        VecNormalize) and ``actions`` (the environment action, float32 ``(1, da)``; ``clipped_actions`` is the
        same array). ``env`` is the model's VecEnv (``training_env``); ``self`` and ``callback`` come from
        ``learn``'s locals, as with PPO. Returns False as soon as a callback asks to stop.
        """
        if self.agent_ep_info_buffer is None or len(self.agent_ep_info_buffer) != self.n_agents:
            self.agent_ep_info_buffer = [deque(maxlen=self._stats_window_size) for _ in range(self.n_agents)]
        job = arrival.result
        episode = {"r": job.episode_return, "l": job.episode_length, "t": float(arrival.time), "agent": arrival.agent}
        first_step = 0 if pending is None else pending.step
        if first_step == 0:
            self._record_episode(arrival, episode)
        last = job.n_steps - 1
        rewards = job.rewards if job.rewards is not None else np.zeros(job.n_steps)
        infos = job.infos if job.infos is not None else [{} for _ in range(job.n_steps)]
        new_obs, actions = self._callback_step_data(job)
        callback.update_locals({"env": self.env})
        for step in range(first_step, job.n_steps):
            self.num_timesteps += 1
            if pending is not None:
                pending.step = step + 1  # a checkpoint written by this on_step resumes after it
            info = infos[step]
            if step == last:
                info = dict(info)
                info["episode"] = episode
                info["TimeLimit.truncated"] = not job.terminated
                if job.terminal_observation is not None:
                    info["terminal_observation"] = job.terminal_observation
            step_locals = {
                "rewards": np.array([rewards[step]], dtype=np.float32),
                "dones": np.array([step == last]),
                "infos": [info],
                "agent": arrival.agent,
            }
            if new_obs is not None and actions is not None:
                step_locals["new_obs"] = new_obs[step][None]
                step_locals["actions"] = step_locals["clipped_actions"] = actions[step][None]
            callback.update_locals(step_locals)
            if not callback.on_step():
                return False
        return True

    def _callback_step_data(self, job: TrajectoryStats) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """The trajectory's ``new_obs`` (float32 ``(T, *obs_shape)``) and environment actions (float32 ``(T, da)``)
        for the callbacks' locals, or ``(None, None)`` when the workers did not send them (``step_data=False``).

        Under VecNormalize with ``norm_obs`` the observations are normalized with the statistics of now (which
        already hold this trajectory's observations), as PPO's ``new_obs`` come from ``VecNormalize.step``. At
        the last step ``new_obs`` is the terminal observation: no next episode is reset in its place, as a VecEnv
        would do.
        """
        new_obs, actions = job.new_obs, job.actions
        if new_obs is None or actions is None:
            return None, None
        vec_normalize = self._vec_normalize_env
        if vec_normalize is not None and vec_normalize.norm_obs:
            flat = vec_normalize.normalize_obs(new_obs.reshape(len(new_obs), -1))
            new_obs = np.asarray(flat, dtype=np.float32).reshape(new_obs.shape)
        return new_obs, actions

    def _record_episode(self, arrival: Arrival, episode: dict) -> None:
        """The episode buffers and the main env's Monitor, for one used trajectory."""
        assert self.agent_ep_info_buffer is not None
        assert self.ep_info_buffer is not None and self.ep_success_buffer is not None  # SB3's _setup_learn made them
        job = arrival.result
        self.ep_info_buffer.extend([episode])
        self.agent_ep_info_buffer[arrival.agent].append(episode)
        if job.infos:  # SB3's convention: the last step's ``is_success`` feeds rollout/success_rate
            success = job.infos[-1].get("is_success")
            if success is not None:
                self.ep_success_buffer.append(success)
        if self._agent_monitors:
            monitor = self._agent_monitors[arrival.agent]
            if monitor is not None:
                elapsed = time.time() - monitor.t_start
                monitor.episode_returns.append(job.episode_return)
                monitor.episode_lengths.append(job.episode_length)
                monitor.episode_times.append(elapsed)
                if monitor.results_writer is not None:
                    monitor.results_writer.write_row({"r": round(job.episode_return, 6), "l": job.episode_length, "t": round(elapsed, 6)})
        self._episode_num += 1

    def _checked_learning_rate(self) -> float:
        """α at the current remaining progress, from the learning-rate schedule.

        α = 0 is accepted at ``progress_remaining`` = 0 only, the last update of a ``learn`` call, where SB3's and
        rl-zoo3's linear schedules (``progress * α_0``) end: that update takes no step.

        :raises ValueError: starting ``learning_rate:``, naming the value and the progress, when the schedule
            returns NaN, an infinite value, a value < 0, 0 before the end of training, or something that is not a
            number.
        """
        progress = self._current_progress_remaining
        try:
            alpha = float(self.lr_schedule(progress))
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"learning_rate: the schedule's value at progress_remaining={progress} is not a number ({exc}); "
                "α must be a finite float > 0. θ and d_t are unchanged"
            ) from None
        if not (math.isfinite(alpha) and (alpha > 0 or (alpha == 0 and progress == 0))):
            raise ValueError(
                f"learning_rate: the schedule returned α = {alpha!r} at progress_remaining={progress}; α must be a "
                "finite float > 0 (0 only at progress_remaining=0, the end of training). Training stopped before "
                "the update: θ and d_t are unchanged"
            )
        return alpha

    def _nigt_step(self, gradient: np.ndarray, eta: Optional[float] = None, alpha: Optional[float] = None) -> None:
        """d_t = (1 − η) d_{t−1} + η g_t;  θ_{t+1} = θ_t + α d_t/‖d_t‖ (no step when ‖d_t‖ = 0), by :class:`NIGTStep`.

        :param gradient: g_t, float64 ``(d,)``.
        :param eta: η of this update; default the constant ``eta``.
        :param alpha: α, already checked by :meth:`_checked_learning_rate`; default: the schedule's value now.
        :raises ValueError: starting ``learning_rate:`` when the schedule's α is NaN, infinite, < 0 or 0 before
            the end of training, before θ, θ_{t−1} or d_t change.
        """
        alpha = self._checked_learning_rate() if alpha is None else alpha  # before any state changes
        theta, norm = self._nigt.step(self.get_flat_params(), gradient, self.eta if eta is None else eta, alpha)
        if theta is not None:
            self.set_flat_params(theta)
        self.round_stats.update(d_norm=norm, learning_rate=alpha)
        self._n_updates += 1

    def _find_agent_monitors(self) -> list[Optional[Monitor]]:
        """For each agent, the SB3 ``Monitor`` of its environment in the main-process env, if there is one.

        Workers step their own copies of the environment, so the main env's ``Monitor`` never sees an episode;
        the algorithm writes each used trajectory to it instead, so that ``monitor.csv`` files (rl-zoo3's
        ``plot_train``, ``load_results``) fill up as with PPO. Only in-process VecEnvs (DummyVecEnv) are reachable.
        """
        venv = self.env
        while isinstance(venv, VecEnvWrapper):
            venv = venv.venv
        if not isinstance(venv, DummyVecEnv):
            return []
        monitors: list[Optional[Monitor]] = []
        for env in venv.envs:
            while not isinstance(env, Monitor) and isinstance(env, gym.Wrapper):
                env = env.env
            monitors.append(env if isinstance(env, Monitor) else None)
        if not any(monitors):
            return []
        env_index = self._agent_env_index()
        return [monitors[i] if i < len(monitors) else monitors[0] for i in env_index]

    def learn(
        self: SelfNIGT,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: Optional[int] = None,
        tb_log_name: str = "",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfNIGT:
        """Train for at least ``total_timesteps`` environment steps (those of the gradients used).

        Every round fires ``on_rollout_start``, then ``on_step`` once per environment step it consumed (a False
        stops training at once, before the round's update), then ``on_rollout_end`` (AFedPG: a round is n server
        updates, and a False stops before that gradient's update). The workers (processes, Ray actors) and their
        environments stay up for the next call, which reuses them; they are closed on exceptions, on Ctrl-C and
        SIGTERM, by :meth:`close`, when the model is garbage-collected, and at interpreter exit.

        :param total_timesteps: environment steps to train for, an integer >= 1 (an integral float such as
            ``1e5`` is accepted).
        :param callback: SB3 callback(s).
        :param log_interval: None (default): dump the logs after a round once at least :data:`LOG_EVERY_STEPS`
            (2048) environment steps have passed since the last dump, as often as PPO's default rollout; an integer
            k >= 1: every k rounds (AFedPG: rounds of n updates); 0 or less: never.
        :param tb_log_name: tensorboard run name (default: the class name).
        :param reset_num_timesteps: whether to reset the step counter.
        :param progress_bar: show a tqdm/rich progress bar.
        :raises ValueError: starting ``total_timesteps:`` for a budget that is not an integer >= 1 (before anything
            changes); on a NaN or infinite reward or gradient (θ is left unchanged).
        :warns UserWarning: when the budget ends before the first update, stating the environment steps it needs.
        """
        total_timesteps = _check_total_timesteps(total_timesteps)
        if self.env is None:
            raise ValueError("env: this model has no environment; pass one at load(..., env=...) or with set_env()")
        if not self._is_primary() and not self._custom_logger:
            self.set_logger(Logger(folder=None, output_formats=[]))  # rank 0 logs; the others write nothing
        with _terminate_like_interrupt():
            # The workers of the last call, or new ones, before SB3's set-up makes the logger: a start that fails
            # leaves no empty TensorBoard run behind.
            collector = self._started_collector()
            try:
                total_timesteps, callback = self._setup_learn(total_timesteps, callback, reset_num_timesteps,
                                                              tb_log_name or type(self).__name__, progress_bar)
                self._warn_if_budget_too_small(total_timesteps)
                if reset_num_timesteps:
                    self.agent_ep_info_buffer = None
                self._agent_monitors = self._find_agent_monitors()
                callback.on_training_start(locals(), globals())
                self._train(collector, total_timesteps, callback, log_interval)
            except BaseException:
                self.close()  # a failed call leaves no worker, broken or not: the next one starts fresh
                raise
            self._live_workers().epoch = collector.epoch
        callback.on_training_end()
        return self

    def _needs_observation_warmup(self) -> bool:
        """Whether VecNormalize's observation statistics are still fresh: built from at most a few reset
        observations (a variance near 1e-4 would scale the inputs ~100× and clip them)."""
        vec_normalize = self._vec_normalize_env
        if vec_normalize is None or not vec_normalize.norm_obs or not vec_normalize.training:
            return False
        return float(_obs_rms(vec_normalize).count) < 1 + 16 * vec_normalize.num_envs

    def _warm_up_observation_statistics(self, collector: Collector, callback: BaseCallback) -> bool:
        """Warm up fresh VecNormalize statistics before the first gradient is used (docs/time.md, "Observation
        normalization"; the paper has no normalization).

        The reset observations are forgotten, one round of M_init trajectories is sampled at θ_0 with the identity
        normalization (only clipped), and its raw-observation moments become the statistics. The round's gradient
        is discarded; its environment steps and simulated time are charged as usual. Returns False if a callback
        stopped training.
        """
        if not self._needs_observation_warmup():
            return True
        vec_normalize = self._vec_normalize_env
        assert vec_normalize is not None
        # SB3 annotates obs_rms as the dict of a Dict observation space; for a Box it is one RunningMeanStd.
        vec_normalize.obs_rms = RunningMeanStd(shape=_obs_rms(vec_normalize).mean.shape)  # type: ignore[assignment]
        rule = RennalaAggregation(self.n_agents, self.initial_round_size)
        if not self._collect_round(collector, self.get_flat_params(), rule, callback, RoundKind.WARMUP):
            return False
        self._apply_warmup(0)
        return True

    def _train(self, collector: Collector, total_timesteps: int, callback: BaseCallback, log_interval: Optional[int]) -> None:
        """The training loop of :meth:`learn` on a started collector: Algorithm 1, one aggregation round per update
        (each ``_collect_round`` fires the round's callbacks; False: a callback stopped training)."""
        if self._pending is not None and not self._resume_pending(callback, total_timesteps, log_interval):
            return
        if self._nigt.direction is None:  # the first step: d_{−1} = Aggregate(θ_0, M_init);  θ_{−1} = θ_0
            if not self._warm_up_observation_statistics(collector, callback):
                return
            rule = self._make_rule(self.initial_round_size)
            if not self._collect_round(collector, self.get_flat_params(), rule, callback, RoundKind.INITIAL):
                return
            self._apply_initial(total_timesteps)
        while self.num_timesteps < total_timesteps:
            lookahead = self._nigt.lookahead(self.get_flat_params(), self.eta)  # θ̃_t
            rule = self._make_rule(self.round_size)
            if not self._collect_round(collector, lookahead, rule, callback, RoundKind.UPDATE):  # g_t = Aggregate(θ̃_t, M)
                return
            self._apply_update(total_timesteps)  # d_t, then θ_{t+1}
            self._maybe_dump_logs(log_interval)
        self._warn_if_no_update(total_timesteps)

    def _resume_pending(self, callback: BaseCallback, total_timesteps: int, log_interval: Optional[int]) -> bool:
        """A round whose callbacks were interrupted (a checkpoint written mid-round, or a callback's False): fire the
        rest of its callbacks, then use it as its kind says. Returns False if a callback stopped training again."""
        assert self._pending is not None
        kind = RoundKind(self._pending.kind)
        if not self._replay_pending(callback):
            return False
        apply = {RoundKind.WARMUP: self._apply_warmup, RoundKind.INITIAL: self._apply_initial, RoundKind.UPDATE: self._apply_update}
        apply[kind](total_timesteps)
        if kind is RoundKind.UPDATE:
            self._maybe_dump_logs(log_interval)
        return True

    def _setup_learn(self, total_timesteps: int, callback: MaybeCallback = None, reset_num_timesteps: bool = True,
                     tb_log_name: str = "run", progress_bar: bool = False) -> tuple[int, BaseCallback]:
        """SB3's ``_setup_learn``; a reset step counter also restarts the log pace (:meth:`_maybe_dump_logs`)."""
        if reset_num_timesteps:
            self._last_dump_timesteps = 0
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)

    def _maybe_dump_logs(self, log_interval: Optional[int], rounds: Optional[int] = None) -> None:
        """After a round: dump the logs if ``log_interval`` says so (see :meth:`learn`).

        :param log_interval: None: when at least :data:`LOG_EVERY_STEPS` environment steps have passed since the
            last dump (or since step 0, after ``reset_num_timesteps``); k >= 1: when ``rounds`` is a multiple of k;
            0 or less: never.
        :param rounds: the round counter ``log_interval`` counts; default the number of updates.
        """
        if log_interval is None:
            due = self.num_timesteps - getattr(self, "_last_dump_timesteps", 0) >= LOG_EVERY_STEPS
        else:
            due = log_interval > 0 and (self._n_updates if rounds is None else rounds) % log_interval == 0
        if due:
            self.dump_logs()

    def dump_logs(self) -> None:
        """Write ``rollout/ep_rew_mean``, ``rollout/ep_len_mean``, the clock, the round statistics and fps."""
        time_elapsed = max((time.time_ns() - self.start_time) / 1e9, sys.float_info.epsilon)
        fps = int((self.num_timesteps - self._num_timesteps_at_start) / time_elapsed)
        self.logger.record("time/iterations", self._n_updates, exclude="tensorboard")
        if self.ep_info_buffer:
            self.logger.record("rollout/ep_rew_mean", safe_mean([ep["r"] for ep in self.ep_info_buffer]))
            self.logger.record("rollout/ep_len_mean", safe_mean([ep["l"] for ep in self.ep_info_buffer]))
        if self.heterogeneous and self.agent_ep_info_buffer is not None:
            # Each agent's return on its own environment, and their equal-weighted mean (the objective J).
            means = [safe_mean([ep["r"] for ep in buffer]) for buffer in self.agent_ep_info_buffer]
            for agent, mean in enumerate(means):
                if self.agent_ep_info_buffer[agent]:
                    self.logger.record(f"rollout/ep_rew_mean_agent_{agent}", mean)
            if all(self.agent_ep_info_buffer):
                self.logger.record("rollout/ep_rew_mean_equal_weight", float(np.mean(means)))
        if self.ep_success_buffer:
            self.logger.record("rollout/success_rate", safe_mean(self.ep_success_buffer))
        if getattr(self, "_warmup_unlogged", False):  # an observation warm-up round ran since the last log
            self.logger.record("train/observation_warmup", 1)
            self._warmup_unlogged = False
        self.logger.record("time/fps", fps)
        self.logger.record("time/time_elapsed", int(time_elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.record("time/simulated_time", self.simulated_time)
        self.logger.record("time/communications", self.n_communications)
        self.logger.record("time/bytes_sent", self.bytes_sent)
        for key, value in self.round_stats.items():
            self.logger.record(f"train/{key}", value, exclude="tensorboard" if isinstance(value, str) else None)
        self.logger.dump(step=self.num_timesteps)
        self._last_dump_timesteps = self.num_timesteps
