"""AFedPG (Lan et al., ICLR 2025, arXiv 2404.08003): the asynchronous baseline that updates on every arrival."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from sb3_nigt.algorithms.afedpg_server import AsyncServer, new_job
from sb3_nigt.algorithms.base import NIGTAlgorithm, PendingRound, RoundKind, _obs_rms
from sb3_nigt.backends.contract import Backend
from sb3_nigt.clock.rounds import Arrival, Collector
from sb3_nigt.clock.timing import TimeSpec
from sb3_nigt.core.aggregation import AggregationRule
from sb3_nigt.core.errors import NonFiniteEnvironmentError
from sb3_nigt.policies import NIGTPolicy


class AFedPG(NIGTAlgorithm):
    """AFedPG: asynchronous federated policy gradient, with a server step on every arriving gradient.

    Lan, Han, Rahman, Chen, Yang, Xu (ICLR 2025, arXiv 2404.08003), used by Tyurin, Spiridonov, Rudenko (ICLR
    2026) as the previous state of the art. Our sources give no pseudo-code for it: what follows is **our
    inferred reading** (docs/algorithms.md, "AFedPG (our inferred reading)"). The server holds θ_k, θ_{k−1} and d:

    - it sends (θ_k, θ_{k−1}) to agent i (κ_i seconds);
    - agent i samples one trajectory at the lookahead point θ̃ = θ_k + ((1 − η)/η)(θ_k − θ_{k−1}), computes
      g_H (h_i seconds) and uploads it (κ_i seconds);
    - on each arrival the server does d ← (1 − η_k) d + η_k g and θ_{k+1} = θ_k + α d/‖d‖, and replies with
      (θ_{k+1}, θ_k) to that agent only.

    Gradients are stale: the **staleness** of a gradient is the number of server updates between the agent's
    download and its upload. There is one upload and one download per gradient (Rennala: one per agent per
    round). d starts as the first arriving gradient.

    The shared parameters mean what they mean for the NIGT algorithms
    (:class:`~sb3_nigt.algorithms.base.NIGTAlgorithm`, whose checks they go through); ``round_size`` is not used (a
    batch is one gradient: giving it warns), and ``initial_round_size`` only sizes the observation warm-up round that
    fresh VecNormalize statistics trigger (docs/algorithms.md, "Where this library departs from the paper, or
    reads it"). A "round" here is n consecutive server updates: the callbacks' ``on_rollout_start``/
    ``on_rollout_end`` and the ``log_interval`` count those.

    :param policy: ``"MlpPolicy"`` or a subclass of :class:`~sb3_nigt.policies.NIGTPolicy`.
    :param env: one environment shared by all agents, or one per agent (as for the NIGT algorithms); a flat Box
        observation space and a Box action space with finite bounds.
    :param learning_rate: α > 0, the length of each normalized server step; a float or an SB3 schedule of the
        remaining progress (checked at every update: finite and > 0, or 0 at the end of training).
    :param eta: η ∈ (0, 1], the constant weight of the new gradient (and the lookahead's η); default 0.1; formerly
        ``momentum``.
    :param round_size: not used (every arriving gradient is a step); giving it warns. Default 20, which only
        sizes the default ``initial_round_size``.
    :param initial_round_size: gradients of the observation warm-up round (fresh VecNormalize statistics only);
        default ``round_size``.
    :param horizon: H >= 1, environment steps per trajectory at most; default the env's ``max_episode_steps``,
        else 1000.
    :param gamma: γ ∈ [0, 1], the discount factor.
    :param n_agents: n >= 1; default the number of environments given.
    :param compute_times: h_i, seconds per gradient (or per step); see :class:`~sb3_nigt.clock.timing.TimingModel`.
    :param communication_times: κ_i, seconds per vector; see :class:`~sb3_nigt.clock.timing.TimingModel`.
    :param compute_time_unit: ``"gradient"``, ``"step"`` or ``"horizon"`` (as for the NIGT algorithms).
    :param outages: not modelled for AFedPG's per-arrival server: must be None.
    :param clock: ``"simulated"`` or ``"real"``.
    :param backend: ``"inline"``, ``"subprocess"`` or a Backend instance.
    :param n_workers: processes of the subprocess backend; default as for the NIGT algorithms.
    :param worker_timeout: seconds a busy worker may stay silent before it is replaced; None: never.
    :param max_failures: worker losses in a row after which ``learn`` raises ``WorkerError``.
    :param time_scale: real clock only: scale of the emulated sleeps; None injects none.
    :param start_method: multiprocessing start method of the subprocess backend (one of
        ``multiprocessing.get_all_start_methods()``); default forkserver, else spawn.
    :param record_trace: record the clock's events in ``model.trace``.
    :param step_data: send each step's observation and environment action, for callbacks that read
        ``new_obs`` and ``actions`` (default True; False leaves them out; as for the NIGT algorithms).
    :param stats_window_size: episodes averaged for ``rollout/ep_rew_mean``.
    :param tensorboard_log: tensorboard log folder, or None.
    :param policy_kwargs: keyword arguments of the policy (``net_arch``, ``activation_fn``, ``min_std``, ...).
    :param verbose: 0 silent, 1 training information.
    :param seed: seed of the policy's initialisation and of every job, an integer in [0, 2**32 - 1], or None.
    :param device: torch device of the main policy (default ``"cpu"``).
    :param momentum: the old name of ``eta`` (with a ``FutureWarning``).
    :param batch_size: the old name of ``round_size`` (with a ``FutureWarning``; not used either).
    :param initial_batch_size: the old name of ``initial_round_size`` (with a ``FutureWarning``).
    :param momentum_schedule: the momentum hook: a callable ``(staleness, update_index) -> η`` giving the η_k of
        each update from the arriving gradient's staleness (int, >= 0) and the server's update counter k (int);
        None (default) keeps the constant ``eta``. A delay-adaptive schedule plugs in here. The lookahead
        point θ̃ = θ_k + ((1 − η)/η)(θ_k − θ_{k−1}) uses the constant ``eta``, not η_k: θ̃ is formed when
        the server replies to the agent, and the η_k of the update that the agent's gradient will feed depends on
        that gradient's staleness, which is only known when it arrives (docs/algorithms.md, "AFedPG (our inferred
        reading)").
    :raises ValueError: as the NIGT algorithms; also when ``momentum_schedule`` is not callable or returns a value
        outside (0, 1] (naming it), and for a NaN or infinite gradient (θ is left unchanged).

    Logged: ``train/staleness_mean`` and ``train/staleness_max`` over the last round, ``train/updates``, and
    ``time/communications``; ``model.staleness_histogram[s]`` counts the gradients of staleness s since the start
    (int64).

    Example::

        from sb3_nigt import AFedPG

        model = AFedPG("MlpPolicy", "Pendulum-v1", n_agents=10, compute_times="sqrt", seed=0)
        model.learn(20_000)
        print(model.staleness_histogram)
    """

    speed_weighted = True  # fast agents update the server more often
    per_agent_params = True  # each agent computes at its own θ̃ (published to its own slot)
    uses_round_size = False
    _round_size_note = "every arriving gradient is a server step"

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
        momentum_schedule: Optional[Callable[[int, int], float]] = None,
        momentum: Optional[float] = None,
        batch_size: Optional[int] = None,
        initial_batch_size: Optional[int] = None,
        _init_setup_model: bool = True,
    ):
        if momentum_schedule is not None and not callable(momentum_schedule):
            raise ValueError(f"momentum_schedule: must be None or a callable (staleness, update_index) -> η, got {momentum_schedule!r}")
        self.momentum_schedule = momentum_schedule
        self.staleness_histogram = np.zeros(0, dtype=np.int64)
        self.next_job_index: Optional[list[int]] = None  # per agent, the index of its next gradient (job seeds)
        self._server_jobs: Optional[dict[int, dict]] = None  # simulated clock: each agent's work in flight
        self._window: list[int] = []  # staleness of the current round's updates
        self._in_round = 0  # updates in the current round of n
        super().__init__(
            policy=policy, env=env, learning_rate=learning_rate, eta=eta, round_size=round_size,
            initial_round_size=initial_round_size, horizon=horizon, gamma=gamma, n_agents=n_agents,
            compute_times=compute_times, communication_times=communication_times, compute_time_unit=compute_time_unit,
            outages=outages, clock=clock, backend=backend, n_workers=n_workers, worker_timeout=worker_timeout,
            max_failures=max_failures, time_scale=time_scale, start_method=start_method, record_trace=record_trace,
            step_data=step_data, stats_window_size=stats_window_size, tensorboard_log=tensorboard_log, policy_kwargs=policy_kwargs,
            verbose=verbose, seed=seed, device=device, momentum=momentum, batch_size=batch_size,
            initial_batch_size=initial_batch_size, _init_setup_model=_init_setup_model,
        )

    def _make_rule(self, round_size: int) -> AggregationRule:
        raise NotImplementedError("AFedPG updates on every arrival; it has no aggregation round")

    def estimate_gradient(self, *args: Any, **kwargs: Any):
        """Not available: AFedPG has no aggregation round (each gradient is a step).

        :raises NotImplementedError: always.
        """
        raise NotImplementedError("AFedPG updates on every arrival; it has no aggregation round to estimate")

    def _eta_of_update(self, staleness: int) -> float:
        """η_k of the next update (the hook): ``momentum_schedule(staleness, k)``, else the constant η."""
        if self.momentum_schedule is None:
            return self.eta
        eta = self.momentum_schedule(int(staleness), int(self._n_updates))
        if isinstance(eta, bool) or not isinstance(eta, (int, float, np.floating)) or not (0 < eta <= 1):
            raise ValueError(f"momentum_schedule: returned η = {eta!r} for staleness {staleness}; η must be in (0, 1]")
        return float(eta)

    def _train(self, collector: Collector, total_timesteps: int, callback: BaseCallback, log_interval: Optional[int]) -> None:
        """AFedPG's server on a started collector: one update per arriving gradient. On the simulated clock the
        agents' work in flight (``_server_jobs``) and an arrival whose callbacks were interrupted (``_pending``)
        are kept between ``learn`` calls and saved, so a checkpoint written by any callback resumes exactly. A
        callback's False stops before that gradient's update, which is applied by the next ``learn``.

        Rollout events come in pairs within each ``learn`` call: ``on_rollout_start`` before the first arrival of
        a round of n updates, ``on_rollout_end`` after its last one, or when the budget ends ``learn`` in the
        middle of a round (not when a callback's False stops it, as with SB3's algorithms)."""
        self._rollout_open = False
        self._stopped_by_callback = False
        self._serve_updates(collector, total_timesteps, callback, log_interval)
        if self._rollout_open and not self._stopped_by_callback:
            callback.on_rollout_end()
        self._rollout_open = False

    def _open_rollout(self, callback: BaseCallback) -> None:
        if not self._rollout_open:
            callback.on_rollout_start()
            self._rollout_open = True

    def _serve_updates(self, collector: Collector, total_timesteps: int, callback: BaseCallback, log_interval: Optional[int]) -> None:
        if self._nigt.previous is None:
            self._nigt.start(self.get_flat_params())  # θ_{−1} = θ_0; d starts as the first arriving gradient
        if self.next_job_index is None or len(self.next_job_index) != self.n_agents:
            self.next_job_index = [0] * self.n_agents
        if self.clock != "simulated" or self._server_jobs is None:
            self._server_jobs = {}  # the real clock does not carry work over

        def on_arrival(arrival: Arrival) -> tuple[Optional[tuple], bool]:
            assert arrival.gradient is not None
            if not np.all(np.isfinite(arrival.gradient)):
                raise ValueError(
                    f"gradient: agent {arrival.agent}'s gradient {arrival.index} has non-finite entries (NaN or inf); "
                    "training stopped before the update, θ is unchanged"
                )
            self._clock = arrival.time
            self._update_observation_statistics(arrival)  # before the trajectory's on_step calls, as in the others
            self._pending = PendingRound(RoundKind.ARRIVAL, arrival.gradient.astype(np.float64), None, [arrival])
            self._open_rollout(callback)
            if not self._replay_pending_arrival(callback):
                self._stopped_by_callback = True
                return None, True
            return self._finish_arrival(total_timesteps, callback, log_interval)

        if self._pending is not None and not self._resume_pending_arrival(total_timesteps, callback, log_interval):
            return
        if not self._warm_up_before_serving(collector, callback):
            self._stopped_by_callback = True
            return
        fresh = self.n_agents - len(self._server_jobs)  # agents that download θ now
        self.n_communications += fresh
        self.bytes_sent += fresh * 4 * self.n_params
        try:
            AsyncServer(collector).serve(self._lookahead(), self._obs_norm(), self._clock, list(self.next_job_index),
                                         on_arrival, first_version=self._n_updates,
                                         trace=self.trace if self.record_trace else None, jobs=self._server_jobs)
        except NonFiniteEnvironmentError as exc:  # the worker names job round 0 (every AFedPG job seed has round 0)
            raise exc.at_round(f"AFedPG round {self.n_rounds} (server update {self._n_updates})") from exc

    def _lookahead(self) -> np.ndarray:
        """θ̃ = θ_k + ((1 − η)/η)(θ_k − θ_{k−1}) with the constant η, as the float32 vector sent to an agent."""
        return self._nigt.lookahead(self.get_flat_params(), self.eta).astype(np.float32)

    def _resume_pending_arrival(self, total_timesteps: int, callback: BaseCallback, log_interval: Optional[int]) -> bool:
        """An arrival whose callbacks were interrupted (a checkpoint or a False): the rest of its callbacks, its
        update, and (simulated clock) the agent's next job. Returns False when serving must stop (a callback's
        False, or the budget is spent)."""
        assert self._pending is not None and self._server_jobs is not None
        arrival = self._pending.arrivals[0]
        self._open_rollout(callback)
        if not self._replay_pending_arrival(callback):
            self._stopped_by_callback = True
            return False
        reply, stop = self._finish_arrival(total_timesteps, callback, log_interval)
        if self.clock == "simulated":
            self._server_jobs[arrival.agent] = new_job(arrival.agent, arrival.index + 1, arrival.time, *reply)
        return not stop

    def _warm_up_before_serving(self, collector: Collector, callback: BaseCallback) -> bool:
        """The observation warm-up round of fresh VecNormalize statistics, before the first gradient (as in the
        other algorithms); the agents' next jobs start past the indices it used. False if a callback stopped."""
        if self._nigt.direction is not None or self._server_jobs or not self._needs_observation_warmup():
            return True
        warmed = self._warm_up_observation_statistics(collector, callback)
        # The warm-up used job indices 0..M_i (the last one possibly in flight): start past them.
        assert self.last_counts is not None and self.next_job_index is not None
        self.next_job_index = [i + int(c) + 1 for i, c in zip(self.next_job_index, self.last_counts)]
        self.round_stats = {}  # AFedPG's statistics are its own (staleness, updates)
        return warmed

    def _update_observation_statistics(self, arrival: Arrival) -> None:
        """Merge the arrival's raw-observation moments into VecNormalize's statistics (when it is training), once,
        before its ``on_step`` calls: an EvalCallback or a checkpoint fired by them sees the statistics that
        include the trajectory, as with the other three algorithms."""
        vec_normalize = self._vec_normalize_env
        moments = arrival.result.obs_moments
        if vec_normalize is not None and vec_normalize.training and moments is not None:
            _obs_rms(vec_normalize).update_from_moments(moments.mean, moments.var, moments.count)

    def _replay_pending_arrival(self, callback: BaseCallback) -> bool:
        """The callbacks of the pending arrival, from where they stopped."""
        assert self._pending is not None
        return self._replay_arrival(self._pending.arrivals[0], callback, self._pending)

    def _finish_arrival(self, total_timesteps: int, callback: BaseCallback, log_interval: Optional[int]) -> tuple[tuple, bool]:
        """The server's update for the pending arrival; returns the reply (θ̃, obs_norm, version) and whether the
        budget is spent."""
        assert self._pending is not None
        # α first: a bad schedule value stops before anything changes (θ, d, the job indices, the pending arrival).
        self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
        alpha = self._checked_learning_rate()
        arrival, gradient = self._pending.arrivals[0], self._pending.aggregate
        self._pending = None
        staleness = self._n_updates - arrival.version
        assert self.next_job_index is not None  # set when learn starts
        self.next_job_index[arrival.agent] = arrival.index + 1
        eta = self._eta_of_update(staleness)
        if self._nigt.direction is None:
            self._nigt.direction, eta = gradient.copy(), 1.0  # d starts as the first gradient, then takes the step
        self._nigt_step(gradient, eta, alpha)
        self.n_communications += 2  # the upload and the reply
        self.bytes_sent += 8 * self.n_params + 4 * self.n_params
        if staleness >= len(self.staleness_histogram):  # grow the histogram to index ``staleness``
            self.staleness_histogram = np.pad(self.staleness_histogram, (0, staleness + 1 - len(self.staleness_histogram)))
        self.staleness_histogram[staleness] += 1
        self._window.append(staleness)
        self._in_round += 1
        if self._in_round == self.n_agents:
            self._end_round(self._window, callback, log_interval)
            self._window = []
            self._in_round = 0
        reply = (self._lookahead(), self._obs_norm(), self._n_updates)
        return reply, self.num_timesteps >= total_timesteps

    def _end_round(self, window: list[int], callback: Any, log_interval: Optional[int]) -> None:
        """Close a round of n updates: its statistics, ``on_rollout_end``, and the logs every ``log_interval``."""
        self.n_rounds += 1
        self.round_stats.update(staleness_mean=float(np.mean(window)), staleness_max=int(np.max(window)), updates=self._n_updates)
        callback.on_rollout_end()
        self._rollout_open = False
        self._maybe_dump_logs(log_interval, self.n_rounds)
