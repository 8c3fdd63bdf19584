"""Throughput benchmark: environment steps per second of gradient collection, against the physical limit.

The physical limit of one core is ``env.step`` replaying the very states the policy visits (the same reset seeds
and the same actions, recorded in an untimed pass: MuJoCo is deterministic, and the script checks every replayed
return). The random-action rate is printed too, but it is not a limit: gymnasium's ``Box.sample`` alone costs
tens of µs per step. Measures, in one run, and prints a Markdown table:

1. inline collection (``Collector.collect`` timed directly) on Hopper at the initial θ_0, whose very short
   trajectories (about 14 steps) expose the fixed cost per gradient. It *alternates* every round with the replay
   of that round's trajectories and as many random-action steps, so that all three see the same machine load;
   ratios are of the summed rates, with their spread over ``--blocks`` consecutive groups;
2. what the simulated clock's engine runs, on trajectories that all last the time limit: Hopper without early
   termination (1000 steps) and Reacher (50 steps), cut into lockstep batches as a round of that many counted
   trajectories is (at most ``LOCKSTEP_SIZE``), alternating every batch: ``GradientWorker.run_unit`` on the
   batch (one batched forward per step, one weighted backward), ``run_unit`` on lockstep batches of one (one
   trajectory, its own backward), the replay of the same trajectories, as many random-action steps, and the
   replay stepped in lockstep over one environment instance per trajectory (what a batch's environments cost),
   and the policy's arithmetic alone on the same trajectories (the batched NumPy forward of every step and the
   one weighted torch backward, no environment), which gives the ceiling of any engine built on that arithmetic:
   replay / (replay + arithmetic). The same is measured on Hopper at θ_0 with its early termination;
3. memory per lockstep batch: the ``tracemalloc`` peak of ``run_unit`` on batches of 1, 4 and 16 trajectories of
   the same length, as bytes per trajectory-step (it should not grow with the batch);
4. per-call costs that explain the ratios (``Box.sample``, the NumPy forward of one and of 16 observations, the
   seeding and reset, ``weighted_gradient`` of θ_0 batches);
5. RennalaNIGT with ``backend="inline"``: ``model.learn`` rate (wall clock, and after the first round) and the
   collection-only rate at θ after the learn run (the same θ for every backend on the simulated clock;
   checked);
6. the same with ``backend="subprocess"`` and ``n_workers`` = 1 and 2 (worker start-up excluded from the
   collection-only rate), and the speedup of 2 workers over 1;
7. SB3 PPO's ``learn`` rate on the same environment (default hyperparameters, DummyVecEnv, one env, CPU), with
   torch's default thread count and with one thread (``--ppo-threads``).

For every measurement that runs in this process (raw, inline, same states) the CPU time of this process is
taken too (``time.process_time``): on a machine shared with other work the wall rates move with the load, while
steps per CPU second compare the per-core cost of the code itself; both ratios are printed. Targets are printed
beside the measured figures, never asserted.

RennalaNIGT settings: n_agents=10, compute_times="sqrt", round_size=20, seed=0, simulated clock.
Every figure printed is measured in this run; nothing is hard-coded.

Usage::

    .venv/bin/python benchmarks/throughput.py                 # full run
    .venv/bin/python benchmarks/throughput.py --quick         # smoke run
    .venv/bin/python benchmarks/throughput.py --steps 300000 --out runs/throughput.md
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

FULL_STEPS = 100_000  # env steps per NIGT / raw measurement in the full run
FULL_PPO_STEPS = 20_480  # 10 PPO rollouts of 2048 steps
QUICK_STEPS = 12_000
QUICK_PPO_STEPS = 2_048
FULL_BLOCKS = 10  # groups of the paired (alternating) measurements, for the spread of their ratios
QUICK_BLOCKS = 3

NIGT_KWARGS = dict(n_agents=10, compute_times="sqrt", round_size=20, seed=0)


@dataclass
class Row:
    what: str
    backend: str
    workers: str
    steps: int
    seconds: float
    extra: str = ""
    steady: Optional[float] = None  # learn only: steps/s after the first round (start-up excluded)
    blocks: list[tuple[int, float, float]] = field(default_factory=list)  # paired rows: (steps, wall s, CPU s) per block
    cpu: Optional[float] = None  # CPU seconds of this process over the timed part (in-process rows only)
    gradients: int = 0  # collection rows: gradients counted (trajectories)

    @property
    def rate(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_rate(self) -> Optional[float]:
        """Steps per CPU second of this process: insensitive to other processes competing for the core."""
        return self.steps / self.cpu if self.cpu else None


def first_makeable(*env_ids: str) -> str:
    """The first of ``env_ids`` that ``gymnasium.make`` can build (Hopper-v4, else Hopper-v5: mujoco's version
    decides)."""
    import gymnasium as gym

    for env_id in env_ids:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gym.make(env_id).close()
            return env_id
        except Exception as exc:  # noqa: BLE001 - report and fall back
            print(f"note: gym.make({env_id!r}) failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    raise RuntimeError(f"none of {env_ids} can be made (is mujoco installed?)")


def hopper_id() -> str:
    """Hopper-v4 where it can be made, else Hopper-v5."""
    return first_makeable("Hopper-v4", "Hopper-v5")


def quiet_make_factory(factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory()


def quiet_make(env_id: str):
    """``gymnasium.make(env_id)`` without gymnasium's "Hopper-v4 is out of date" warning.

    gymnasium installs its own ``once`` filter for that DeprecationWarning on import, which beats
    PYTHONWARNINGS, so the worker processes would print it; a factory keeps their stderr clean. The workers
    build exactly what ``env=env_id`` would build (``gymnasium.make(env_id)``).
    """
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gym.make(env_id)


# ------------------------------------------------------------------------------------------- timed sessions
class RawSession:
    """Random actions, reset on termination/truncation, main process, one core; run in blocks."""

    def __init__(self, env, seed: int = 0):
        self.env = env
        env.action_space.seed(seed)
        env.reset(seed=seed)
        self.episodes = 0

    def warm_up(self, steps: int) -> None:
        self.run(steps)
        self.episodes = 0

    def run(self, steps: int) -> tuple[int, float]:
        sample, step, reset = self.env.action_space.sample, self.env.step, self.env.reset
        episodes = 0
        start = time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = step(sample())
            if terminated or truncated:
                reset()
                episodes += 1
        seconds = time.perf_counter() - start
        self.episodes += episodes
        return steps, seconds

    def close(self) -> None:
        self.env.close()


class ReplaySession:
    """``env.step`` replaying recorded trajectories: the same reset seeds and the same actions as the policy took,
    hence the very same states (MuJoCo is deterministic), without the policy, the sampling or the gradient."""

    def __init__(self, env):
        self.env = env
        self.mismatches = 0  # trajectories whose replayed return differs from the recorded one
        self.trajectories = 0

    def run(self, trajectories: list) -> tuple[int, float]:
        """``trajectories``: (reset seed, env actions, recorded return) each; returns (steps, wall seconds)."""
        step, reset = self.env.step, self.env.reset
        done = 0
        returns = []
        start = time.perf_counter()
        for reset_seed, actions, _ in trajectories:
            reset(seed=reset_seed)
            total = 0.0
            for action in actions:
                total += step(action)[1]
            returns.append(total)
            done += len(actions)
        seconds = time.perf_counter() - start
        self.trajectories += len(trajectories)
        self.mismatches += sum(r != t[2] for r, t in zip(returns, trajectories))
        return done, seconds

    def close(self) -> None:
        self.env.close()


class LockstepReplaySession:
    """The replay of a lockstep batch as the batch steps it: one environment instance per trajectory, step t of
    every live trajectory before step t + 1 of any. Against :class:`ReplaySession` (one instance, trajectory
    after trajectory), it shows what stepping B instances in turn costs the environment itself (caches)."""

    def __init__(self, envs: list):
        self.envs = envs

    def run(self, trajectories: list) -> tuple[int, float]:
        """``trajectories``: (reset seed, env actions, recorded return) each, at most one per instance."""
        envs = self.envs[:len(trajectories)]
        start = time.perf_counter()
        for env, (reset_seed, _, _) in zip(envs, trajectories):
            env.reset(seed=reset_seed)
        live = [(env.step, actions) for env, (_, actions, _) in zip(envs, trajectories)]
        t = 0
        while live:
            for step, actions in live:
                step(actions[t])
            t += 1
            live = [(step, actions) for step, actions in live if len(actions) > t]
        seconds = time.perf_counter() - start
        return sum(len(actions) for _, actions, _ in trajectories), seconds

    def close(self) -> None:
        for env in self.envs:
            env.close()


def record_actions(worker, unit) -> list:
    """Samples the unit's trajectories again (untimed) with ``worker`` (which keeps step data) at its θ, in the
    same lockstep batch as ``run_unit`` (hence the same bits), and returns (reset seed, env actions, return) for
    each: what :class:`ReplaySession` replays."""
    from sb3_nigt.workers.rollout import trajectory_rng

    if unit.items:
        items = [(item.agent, item.index, item.env_index) for item in unit.items]
    else:
        items = [(unit.agent, k, unit.env_index) for k in unit.indices]
    trajectories = worker.sample_batch(items, unit.seed, unit.horizon, round_index=unit.round_index)
    out = []
    for (agent, index, _), trajectory in zip(items, trajectories):
        reset_seed = int(trajectory_rng(unit.seed, unit.round_index, agent, index).integers(0, 2**31 - 1))  # its first draw
        out.append((reset_seed, list(trajectory.stats.actions), trajectory.stats.episode_return))
    return out


class CollectSession:
    """``Collector.collect`` rounds at one θ, timed directly; start-up and a warm-up round excluded.

    The backend's ``wait`` is wrapped to add up ``UnitResult.seconds`` (time inside ``GradientWorker.run_unit``,
    measured where the unit ran), which gives the share of wall time the workers were computing.
    """

    def __init__(self, model, params=None):
        from sb3_nigt.clock.exact import ZERO
        from sb3_nigt.workers.rollout import UnitResult

        self.model = model
        self.params = model.get_flat_params() if params is None else params
        self.collector = model._make_collector()
        self.busy = 0.0
        self.units = 0
        self.computed: list = []  # the WorkUnits computed since the caller last cleared it (for the replay baseline)
        backend = self.collector.backend
        inner_wait = backend.wait

        def timed_wait(*args, **kwargs):
            events = inner_wait(*args, **kwargs)
            for event in events:
                if isinstance(event, UnitResult):
                    self.busy += event.seconds
                    self.units += 1
                    self.computed.append(event.unit)
            return events

        backend.wait = timed_wait  # instance attribute: shadows the method for this backend only
        start = time.perf_counter()
        self.collector.start()
        result = self.collector.collect(self.params, model._make_rule(model.round_size), 0, ZERO)  # builds the envs
        self.warmup = time.perf_counter() - start
        self.clock = result.end_time
        self.round_index = 1
        self.rounds = 0
        self.busy, self.units = 0.0, 0
        self.computed.clear()

    def run(self, steps: int) -> tuple[int, float]:
        total = 0
        start = time.perf_counter()
        while total < steps:
            result = self.collector.collect(self.params, self.model._make_rule(self.model.round_size), self.round_index, self.clock)
            total += result.n_steps
            self.clock = result.end_time
            self.round_index += 1
            self.rounds += 1
        return total, time.perf_counter() - start

    def close(self) -> None:
        self.collector.close()


def timed(row: Row, fn: Callable[[], tuple[int, float]], group: int) -> int:
    """Runs ``fn`` (returns env steps and wall seconds), adds its steps, wall and CPU seconds of this process to
    ``row`` and to the row's ``group``-th block; returns the steps."""
    cpu = time.process_time()
    done, seconds = fn()
    cpu = time.process_time() - cpu
    while len(row.blocks) <= group:
        row.blocks.append((0, 0.0, 0.0))
    steps, wall, cpu_s = row.blocks[group]
    row.blocks[group] = (steps + done, wall + seconds, cpu_s + cpu)
    row.steps += done
    row.seconds += seconds
    row.cpu = (row.cpu or 0.0) + cpu
    return done


# --------------------------------------------------------------------------------------------- measurements
def measure_raw_and_theta0(env_id: str, steps: int, groups: int) -> tuple[Row, Row, Row]:
    """Inline collection at θ_0 against two baselines, alternating every round so that all three see the same
    machine load: one ``collect`` round; the replay of that round's trajectories (same reset seeds, same actions,
    hence the same states, recorded in an untimed pass); as many raw steps with random actions. The order of
    the random-action piece swaps every time. The alternations are pooled into ``groups`` consecutive groups
    for the spread of the ratios."""
    from sb3_nigt.workers.rollout import GradientWorker

    raw_session = RawSession(quiet_make(env_id))
    raw_session.warm_up(min(1000, steps))
    replay_session = ReplaySession(quiet_make(env_id))
    model = make_nigt(env_id, "inline", None)
    collect = CollectSession(model)
    recorder = GradientWorker([functools.partial(quiet_make, env_id)], model.policy_class, model.observation_space, model.action_space,
                              model.policy_kwargs, step_data=True)
    recorder.set_params(collect.params)
    raw = Row("raw env.step, random actions", "main process", "1", 0, 0.0)
    replay = Row("raw env.step replaying the θ_0 rows' trajectories (same states)", "main process", "1", 0, 0.0)
    coll = Row("RennalaNIGT collection only, θ_0 (initial)", "inline", "1", 0, 0.0)
    alternations = 0
    try:
        while coll.steps < steps:
            group = min(groups - 1, coll.steps * groups // steps)
            if alternations % 2:
                last = max(coll.steps // max(alternations, 1), 1)  # about one round's steps
                timed(raw, lambda n=last: raw_session.run(n), group)
            collect.computed.clear()
            done = timed(coll, lambda: collect.run(1), group)
            trajectories = [t for unit in collect.computed for t in record_actions(recorder, unit)]  # untimed
            timed(replay, lambda ts=trajectories: replay_session.run(ts), group)
            if alternations % 2 == 0:
                timed(raw, lambda n=done: raw_session.run(n), group)
            alternations += 1
    finally:
        raw_session.close()
        replay_session.close()
        recorder.close()
        collect.close()
    raw.extra = (f"{raw.steps / max(raw_session.episodes, 1):.0f} steps/episode; alternating with the θ_0 row, "
                 f"{alternations} alternations in {len(raw.blocks)} groups")
    replay.extra = (f"{replay_session.trajectories} trajectories, {replay.steps / max(replay_session.trajectories, 1):.1f} steps each; "
                    f"replayed return differs from the recorded one in {replay_session.mismatches}")
    coll.gradients = collect.rounds * NIGT_KWARGS["round_size"]
    coll.extra = (
        f"{collect.rounds} rounds, {coll.steps / (collect.rounds * NIGT_KWARGS['round_size']):.1f} steps/gradient, "
        f"{collect.units} units; inside run_unit {100 * collect.busy / coll.seconds:.0f}% of wall; "
        f"start-up + 1st round {collect.warmup:.2f} s excluded"
    )
    return raw, replay, coll


def measure_same_states(env_id: str, env_kwargs: dict, label: str, steps: int, groups: int,
                        trajectory_steps: Optional[int] = None) -> tuple[list[Row], str]:
    """Per-step efficiency of what the engine runs on trajectories that all last the time limit: Hopper without
    early termination (1000 steps) or Reacher (50 steps, it never terminates).

    The trajectories (same job seeds) are cut into lockstep batches as the engine cuts a round of that many
    counted trajectories (``lockstep_sizes``: near-equal, at most ``LOCKSTEP_SIZE``). Five sessions alternate
    every batch (the order rotates), all in this process with torch on one thread: ``GradientWorker.run_unit``
    on the lockstep batch (one batched forward per step, one weighted backward: the simulated clock's path),
    ``run_unit`` on a lockstep batch of one for each of its trajectories (one forward per step of one
    observation, one backward per trajectory), the replay of the batch's trajectories (same states, recorded in
    an untimed pass), as many raw steps with random actions, and the replay stepped in lockstep over one
    environment instance per trajectory (what the batch's environments alone cost). Every weight is 1, so the
    two gradient sums compare directly. Every environment instance is built before timing starts.
    """
    import numpy as np
    import torch as th

    from sb3_nigt.backends.contract import single_threaded_torch
    from sb3_nigt.policies import NIGTPolicy
    from sb3_nigt.workers.env_factory import EnvFactory
    from sb3_nigt.workers.rollout import LOCKSTEP_SIZE, BatchItem, GradientWorker, WorkUnit, lockstep_sizes

    factory = EnvFactory(env_id, env_kwargs)
    probe = quiet_make_factory(factory)
    th.manual_seed(0)
    make = functools.partial(quiet_make_factory, factory)
    workers = [GradientWorker([make], NIGTPolicy, probe.observation_space, probe.action_space, {}, step_data=(i == 2)) for i in range(3)]
    batch_worker, single_worker, recorder = workers
    theta = th.nn.utils.parameters_to_vector(batch_worker.policy.parameters()).detach().numpy()
    single_worker.set_params(theta)
    recorder.set_params(theta)
    for worker in workers:
        for copy in range(LOCKSTEP_SIZE):
            worker.env(0, copy)  # built now, not inside a timed piece
    horizon = probe.spec.max_episode_steps or 1000
    n_traj = max(1, steps // (trajectory_steps or horizon))  # trajectory_steps: a typical length, sizes the run only
    seed, gamma = 0, 0.99
    units, first = [], 0
    for size in lockstep_sizes(n_traj):
        items = tuple(BatchItem(0, k, 0, 1.0) for k in range(first, first + size))
        units.append(WorkUnit(0, 0, first, size, seed, 0, horizon, gamma, items=items))
        first += size
    sums: dict = {"batch": None, "single": None}

    def add(key: str, gradient: np.ndarray) -> None:
        gradient = gradient.astype(np.float64)
        sums[key] = gradient if sums[key] is None else sums[key] + gradient

    def run_batch(unit: WorkUnit) -> tuple[int, float]:
        start = time.perf_counter()
        result = batch_worker.run_unit(unit)
        seconds = time.perf_counter() - start
        add("batch", result.gradient)
        return result.n_steps, seconds

    def run_compute(unit: WorkUnit, trajectories: list, frames: list) -> tuple[int, float]:
        """The policy's arithmetic alone on the batch's recorded trajectories: the batched NumPy forward of every
        step (``frames``: the live observations of each step, built untimed) and the one weighted backward."""
        start = time.perf_counter()
        for frame in frames:
            batch_worker.forward(frame)
        batch_worker.weighted_gradient(trajectories, [item.weight for item in unit.items], gamma)
        return sum(len(t.rewards) for t in trajectories), time.perf_counter() - start

    def frames_of(trajectories: list) -> list:
        longest = max(len(t.rewards) for t in trajectories)
        return [np.stack([t.observations[step] for t in trajectories if len(t.rewards) > step]) for step in range(longest)]

    def run_singles(unit: WorkUnit) -> tuple[int, float]:
        done, seconds = 0, 0.0
        for item in unit.items:
            start = time.perf_counter()
            result = single_worker.run_unit(WorkUnit(0, 0, item.index, 1, seed, 0, horizon, gamma, items=(item,)))
            seconds += time.perf_counter() - start
            done += result.n_steps
            add("single", result.gradient)
        return done, seconds

    raw_session = RawSession(probe)
    raw_session.warm_up(min(1000, steps))
    replay_session = ReplaySession(quiet_make_factory(factory))
    lockstep_replay = LockstepReplaySession([quiet_make_factory(factory) for _ in range(LOCKSTEP_SIZE)])
    raw = Row(f"raw env.step, random actions, {label}", "main process", "1", 0, 0.0)
    replay_b = Row(f"raw env.step replaying the same trajectories in lockstep, one instance each, {label}", "main process", "1", 0, 0.0)
    replay = Row(f"raw env.step replaying the policy's trajectories (same states), {label}", "main process", "1", 0, 0.0)
    batch_row = Row(f"GradientWorker.run_unit, lockstep batches (batched forward, one weighted backward), {label}", "main process", "1", 0, 0.0)
    single_row = Row(f"GradientWorker.run_unit, lockstep batches of one (per-trajectory g_H), {label}", "main process", "1", 0, 0.0)
    compute_row = Row(f"the policy's arithmetic alone (batched NumPy forward of every step + one weighted torch backward, "
                      f"no environment), {label}", "main process", "1", 0, 0.0)
    try:
        with single_threaded_torch():  # as in every worker; restored afterwards (PPO below uses torch's default)
            for u, unit in enumerate(units):
                group = u * groups // len(units)
                trajectories = record_actions(recorder, unit)  # untimed
                sampled = batch_worker.sample_batch([(i.agent, i.index, i.env_index) for i in unit.items], unit.seed,
                                                    unit.horizon, round_index=unit.round_index)  # untimed
                frames = frames_of(sampled)
                n_steps = sum(len(t[1]) for t in trajectories)
                pieces = [
                    (batch_row, lambda w=unit: run_batch(w)),
                    (replay, lambda ts=trajectories: replay_session.run(ts)),
                    (single_row, lambda w=unit: run_singles(w)),
                    (raw, lambda n=n_steps: raw_session.run(n)),
                    (replay_b, lambda ts=trajectories: lockstep_replay.run(ts)),
                    (compute_row, lambda w=unit, ts=sampled, fs=frames: run_compute(w, ts, fs)),
                ]
                for row, fn in pieces[u % 6:] + pieces[:u % 6]:
                    timed(row, fn, group)
    finally:
        for worker in workers:
            worker.close()
        raw_session.close()
        replay_session.close()
        lockstep_replay.close()
    relative = float(np.abs(sums["batch"] - sums["single"]).max() / max(np.abs(sums["single"]).max(), 1e-300))
    sizes = sorted({unit.count for unit in units})
    note = (f"{env_id}, {horizon} steps/trajectory at most, {n_traj} trajectories; the six rows alternate every lockstep batch "
            f"({len(units)} batches of {'/'.join(map(str, sizes))} trajectories, {len(raw.blocks)} groups)")
    for row in (raw, replay, batch_row, single_row, replay_b, compute_row):
        row.extra = note
    replay.extra += f"; replayed return differs from the recorded one in {replay_session.mismatches} of {replay_session.trajectories}"
    check = (f"- same-states check ({label}): Σ lockstep-batch vs Σ batch-of-one gradients, max relative difference "
             f"{relative:.1e} (float32 forward and backward)")
    return [raw, replay, batch_row, single_row, replay_b, compute_row], check


def measure_batch_memory(env_id: str, horizon: int, sizes: tuple[int, ...] = (1, 4, 16)) -> list[tuple[str, str]]:
    """Peak Python-heap memory (``tracemalloc``, which NumPy reports its buffers to; torch's backward buffers are
    not seen) of ``GradientWorker.run_unit`` on one lockstep batch of each size, Hopper without early termination
    and H = ``horizon``, so every trajectory takes exactly H steps: bytes per trajectory-step should not grow
    with the batch. Every environment instance is built, and one batch run, before tracing."""
    import tracemalloc

    import torch as th

    from sb3_nigt.backends.contract import single_threaded_torch
    from sb3_nigt.policies import NIGTPolicy
    from sb3_nigt.workers.env_factory import EnvFactory
    from sb3_nigt.workers.rollout import BatchItem, GradientWorker, WorkUnit

    factory = EnvFactory(env_id, {"terminate_when_unhealthy": False})
    probe = quiet_make_factory(factory)
    th.manual_seed(0)
    worker = GradientWorker([functools.partial(quiet_make_factory, factory)], NIGTPolicy, probe.observation_space,
                            probe.action_space, {})
    probe.close()

    def unit(size: int, first: int) -> WorkUnit:
        items = tuple(BatchItem(0, k, 0, 1.0 / size) for k in range(first, first + size))
        return WorkUnit(0, 0, first, size, 0, 0, horizon, 0.99, items=items)

    out = []
    try:
        with single_threaded_torch():
            worker.run_unit(unit(max(sizes), 10_000))  # builds the instances, warms the allocators (untraced)
            for size in sizes:
                tracemalloc.start()
                result = worker.run_unit(unit(size, 0))
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                out.append((f"tracemalloc peak of run_unit, lockstep batch of {size} × {result.n_steps // size} steps",
                            f"{peak / 1e6:.2f} MB, {peak / result.n_steps:,.0f} bytes per trajectory-step"))
    finally:
        worker.close()
    return out


def measure_fixed_costs(env_id: str, repeats: int) -> list[tuple[str, str]]:
    """Per-call costs that explain the ratios, timed in this process (median of 5 batches of ``repeats`` calls):
    gymnasium's ``Box.sample`` (paid by the random-action baseline only), the policy's per-step NumPy forward,
    for one observation and for a full lockstep step, the per-trajectory seeding and reset, and
    ``GradientWorker.weighted_gradient`` (one forward/backward) on θ_0-like trajectories (14 steps) for lockstep
    batches of 1, 4 and ``LOCKSTEP_SIZE``."""
    import numpy as np

    from sb3_nigt.backends.contract import single_threaded_torch
    from sb3_nigt.policies import NIGTPolicy
    from sb3_nigt.workers.rollout import LOCKSTEP_SIZE, GradientWorker, trajectory_rng

    env = quiet_make(env_id)
    env.action_space.seed(0)
    worker = GradientWorker([functools.partial(quiet_make, env_id)], NIGTPolicy, env.observation_space, env.action_space, {})
    obs = np.asarray(env.reset(seed=0)[0], dtype=np.float32)

    def per_call(fn, n: int) -> float:
        fn()
        batches = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            batches.append((time.perf_counter() - start) / n)
        return sorted(batches)[2]

    trajectories = []
    k = 0
    while len(trajectories) < LOCKSTEP_SIZE:  # θ_0 trajectories of the usual length (Hopper falls after ~14 steps)
        t = worker.sample_batch([(0, k, 0)], 0, 1000)[0]
        k += 1
        if 10 <= t.stats.n_steps <= 18:
            trajectories.append(t)
    batch_obs = np.repeat(obs[None], LOCKSTEP_SIZE, axis=0)
    forward_one = per_call(lambda: worker.forward(obs[None]), repeats)
    forward_batch = per_call(lambda: worker.forward(batch_obs), repeats)
    out = [
        ("gymnasium Box.sample() (random-action baseline only), per step", f"{1e6 * per_call(env.action_space.sample, repeats):.1f} µs"),
        ("policy NumPy forward of one observation (a lockstep step of one trajectory)", f"{1e6 * forward_one:.1f} µs"),
        (f"policy NumPy forward of {LOCKSTEP_SIZE} observations (a full lockstep step)",
         f"{1e6 * forward_batch:.1f} µs ({1e6 * forward_batch / LOCKSTEP_SIZE:.1f} µs per trajectory)"),
        ("trajectory_rng + its reset seed, per trajectory",
         f"{1e6 * per_call(lambda: trajectory_rng(0, 1, 2, 3).integers(0, 2**31 - 1), repeats):.1f} µs"),
        ("env.reset(seed=...), per trajectory (paid by the replay baseline too)", f"{1e6 * per_call(lambda: env.reset(seed=1), repeats // 4):.1f} µs"),
    ]
    with single_threaded_torch():
        for count in (1, 4, LOCKSTEP_SIZE):
            chunk = trajectories[:count]
            cost = per_call(lambda c=chunk: worker.weighted_gradient(c, [1.0] * len(c), 0.99), max(repeats // 50, 5))
            steps = sum(t.stats.n_steps for t in chunk)
            out.append((f"weighted_gradient (one forward/backward) of a lockstep batch of {count} θ_0 trajectories ({steps} steps)",
                        f"{1e3 * cost:.2f} ms ({1e3 * cost / count:.2f} ms per trajectory)"))
    worker.close()
    env.close()
    return out


def make_nigt(env_id: str, backend: str, n_workers: Optional[int]):
    from sb3_nigt import RennalaNIGT

    kwargs = dict(NIGT_KWARGS)
    if backend == "subprocess":
        kwargs["n_workers"] = n_workers
    return RennalaNIGT("MlpPolicy", functools.partial(quiet_make, env_id), backend=backend, device="cpu", **kwargs)


def measure_learn(env_id: str, backend: str, n_workers: Optional[int], steps: int):
    """Wall-clock rate of ``model.learn(steps)`` (worker start-up included), and the rate after the first round.

    Returns the row and the trained model (its θ is then used for the collection-only measurement).
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class FirstRound(BaseCallback):
        """Records the wall time and step count at the end of the first round (start-up and warm-up done)."""

        def __init__(self) -> None:
            super().__init__()
            self.mark: Optional[tuple[float, int]] = None

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            if self.mark is None:
                self.mark = (time.perf_counter(), self.model.num_timesteps)

    model = make_nigt(env_id, backend, n_workers)
    marker = FirstRound()
    cpu = time.process_time()
    start = time.perf_counter()
    model.learn(steps, callback=marker)
    end = time.perf_counter()
    cpu = time.process_time() - cpu
    rounds = model.n_rounds
    steady = None
    if marker.mark is not None and model.num_timesteps > marker.mark[1]:
        steady = (model.num_timesteps - marker.mark[1]) / (end - marker.mark[0])
    extra = f"{rounds} rounds, {model.num_timesteps / max(rounds * NIGT_KWARGS['round_size'], 1):.0f} steps/gradient"
    if backend == "subprocess":
        extra += "; wall s incl. worker start-up"
    row = Row("RennalaNIGT learn", backend, str(n_workers or 1), model.num_timesteps, end - start, extra, steady,
              cpu=cpu if backend == "inline" else None)
    return row, model


def measure_collect(model, steps: int, label: str) -> Row:
    """Collection only: ``Collector.collect`` timed directly at the model's θ; start-up and a warm-up round excluded."""
    session = CollectSession(model)
    try:
        cpu = time.process_time()
        total, seconds = session.run(steps)
        cpu = time.process_time() - cpu
    finally:
        session.close()
    n_workers = model.n_workers or 1
    extra = (
        f"{session.rounds} rounds, {total / (session.rounds * model.round_size):.0f} steps/gradient, {session.units} units; "
        f"workers inside run_unit {100 * session.busy / (n_workers * seconds):.0f}% of wall; "
        f"start-up + 1st round {session.warmup:.2f} s excluded"
    )
    return Row(f"RennalaNIGT collection only, {label}", model.backend, str(n_workers), total, seconds, extra,
               cpu=cpu if model.backend == "inline" else None)


def measure_ppo(env_id: str, steps: int, threads: Optional[int]) -> Row:
    """SB3 PPO with default hyperparameters; ``threads``: torch intra-op threads (None: torch's default)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        env = DummyVecEnv([functools.partial(quiet_make, env_id)])
        model = PPO("MlpPolicy", env, device="cpu", seed=0, verbose=0)
        used = torch.get_num_threads()
        start = time.perf_counter()
        model.learn(steps)
        seconds = time.perf_counter() - start
        env.close()
    finally:
        torch.set_num_threads(previous)
    label = "torch default" if threads is None else "set"
    return Row("SB3 PPO learn (defaults)", "DummyVecEnv n_envs=1", "1", model.num_timesteps, seconds, f"torch threads {used} ({label})")


# ------------------------------------------------------------------------------------------------- report
def machine_facts(env_id: str) -> list[str]:
    import gymnasium
    import mujoco
    import numpy
    import stable_baselines3
    import torch

    import sb3_nigt
    from sb3_nigt.version import ENGINE_VERSION
    from sb3_nigt.workers.rollout import LOCKSTEP_SIZE

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return [
        f"- os.cpu_count(): {os.cpu_count()} (usable by this process: {affinity})",
        f"- platform: {platform.platform()}; CPU: {platform.processor() or platform.machine()}",
        f"- python {platform.python_version()}, torch {torch.__version__} (threads {torch.get_num_threads()}), "
        f"numpy {numpy.__version__}, mujoco {mujoco.__version__}, gymnasium {gymnasium.__version__}, "
        f"stable-baselines3 {stable_baselines3.__version__}, sb3_nigt {sb3_nigt.__version__} "
        f"(ENGINE_VERSION {ENGINE_VERSION}, LOCKSTEP_SIZE {LOCKSTEP_SIZE})",
        f"- env: {env_id}; RennalaNIGT {', '.join(f'{k}={v!r}' for k, v in NIGT_KWARGS.items())}, simulated clock",
    ]


def block_ratios(a: Row, b: Row, cpu: bool = False) -> str:
    """Median and min–max over the groups of a's rate / b's rate (paired rows: each group of a beside one of b);
    rates per wall second, or per CPU second of this process with ``cpu``."""
    k = 2 if cpu else 1
    ratios = sorted((x[0] / x[k]) / (y[0] / y[k]) for x, y in zip(a.blocks, b.blocks) if x[k] > 0 and y[k] > 0 and y[0] > 0)
    if not ratios:
        return ""
    n = len(ratios)
    median = ratios[n // 2] if n % 2 else 0.5 * (ratios[n // 2 - 1] + ratios[n // 2])
    return f" (per group: median {100 * median:.1f}%, {100 * ratios[0]:.1f}–{100 * ratios[-1]:.1f}%, {n} groups)"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def steady_ratio(a: Row, b: Row) -> str:
    return f"{a.steady / b.steady:.2f}x" if a.steady and b.steady else "n/a"


def cpu_pct(a: Row, b: Row) -> str:
    return pct(a.cpu_rate / b.cpu_rate) if a.cpu_rate and b.cpu_rate else "n/a"


def paired(x: Row, y: Row) -> str:
    """x's rate over y's, wall and CPU, with the spread over the groups."""
    return f"wall {pct(x.rate / y.rate)}{block_ratios(x, y)}; CPU {cpu_pct(x, y)}{block_ratios(x, y, cpu=True)}"


def per_step(batch: Row, replay: Row) -> str:
    """Time per env step beyond replaying it, wall / CPU."""
    wall = 1e6 * (batch.seconds - batch.steps / replay.rate) / max(batch.steps, 1)
    cpu = 1e6 * (batch.cpu - batch.steps / replay.cpu_rate) / max(batch.steps, 1) if batch.cpu and replay.cpu_rate else float("nan")
    return f"{wall:.1f} µs / {cpu:.1f} µs"


def per_gradient(collect: Row, replay: Row) -> str:
    """Time per gradient of ``collect`` beyond replaying its env steps, wall / CPU."""
    gradients = max(collect.gradients, 1)
    wall = 1e6 * (collect.seconds - collect.steps / replay.rate) / gradients
    cpu = 1e6 * (collect.cpu - collect.steps / replay.cpu_rate) / gradients if collect.cpu and replay.cpu_rate else float("nan")
    return f"{wall:.0f} µs / {cpu:.0f} µs"


def ceiling(replay: Row, compute: Row) -> str:
    """replay time / (replay time + compute time) per env step, wall, with the spread over the groups."""
    def one(a: tuple, b: tuple) -> float:
        return (a[1] / a[0]) / (a[1] / a[0] + b[1] / b[0])

    ratios = sorted(one(a, b) for a, b in zip(replay.blocks, compute.blocks) if a[0] > 0 and b[0] > 0)
    total = one((replay.steps, replay.seconds), (compute.steps, compute.seconds))
    spread = f" ({100 * ratios[0]:.1f}–{100 * ratios[-1]:.1f}% over {len(ratios)} groups)" if ratios else ""
    return f"{pct(total)}{spread}"


def per_step_cost(compute: Row) -> str:
    return f"{1e6 * compute.seconds / max(compute.steps, 1):.1f} µs"


def derive(r: dict[str, Row]) -> list[tuple[str, str]]:
    """The ratios printed under the table (targets beside the measured figures, never asserted)."""
    reacher = r["r_batch"].extra.split(",")[0]
    return [
        ("**inline collection at θ_0 (short trajectories) / raw env.step replaying the same trajectories (same states, "
         "same resets), per core (target >= 90%)**", paired(r["coll_theta0"], r["replay_theta0"])),
        ("inline collection at θ_0 / raw env.step with random actions", paired(r["coll_theta0"], r["raw"])),
        ("θ_0 collection: time per gradient beyond replaying its env steps, wall / CPU", per_gradient(r["coll_theta0"], r["replay_theta0"])),
        ("**Hopper 1000-step trajectories: run_unit on lockstep batches / replaying the same trajectories, per core "
         "(target >= 97%)**", paired(r["h_batch"], r["h_replay"])),
        ("Hopper 1000-step: lockstep batches / raw env.step with random actions", paired(r["h_batch"], r["h_raw"])),
        ("Hopper 1000-step: lockstep batches of one / replaying the same trajectories", paired(r["h_single"], r["h_replay"])),
        ("Hopper 1000-step: lockstep batches, time per env step beyond replaying it, wall / CPU", per_step(r["h_batch"], r["h_replay"])),
        ("Hopper 1000-step: replay in lockstep over one instance per trajectory / replay on one instance (the environments' own cost of a batch)",
         paired(r["h_replay_b"], r["h_replay"])),
        ("Hopper 1000-step: lockstep batches / replay in lockstep over one instance per trajectory", paired(r["h_batch"], r["h_replay_b"])),
        (f"**{reacher} 50-step trajectories: run_unit on lockstep batches / replaying the same trajectories, per core "
         "(target >= 90%)**", paired(r["r_batch"], r["r_replay"])),
        ("Reacher: lockstep batches / raw env.step with random actions", paired(r["r_batch"], r["r_raw"])),
        ("Reacher: lockstep batches of one / replaying the same trajectories", paired(r["r_single"], r["r_replay"])),
        ("Reacher: lockstep batches, time per env step beyond replaying it, wall / CPU", per_step(r["r_batch"], r["r_replay"])),
        ("Reacher: replay in lockstep over one instance per trajectory / replay on one instance", paired(r["r_replay_b"], r["r_replay"])),
        ("Reacher: lockstep batches / replay in lockstep over one instance per trajectory", paired(r["r_batch"], r["r_replay_b"])),
        ("Hopper θ_0 (early termination) in lockstep batches: run_unit / replaying the same trajectories",
         paired(r["t0_batch"], r["t0_replay"])),
        ("Hopper θ_0: replay in lockstep over one instance per trajectory / replay on one instance",
         paired(r["t0_replay_b"], r["t0_replay"])),
        ("**ceiling of any engine that samples with this NumPy forward and differentiates with torch: replay / (replay + "
         "the policy's arithmetic alone)**, with nothing else (no loop, no bookkeeping, no main process)",
         f"Hopper θ_0 {ceiling(r['t0_replay'], r['t0_compute'])}; Hopper 1000-step {ceiling(r['h_replay'], r['h_compute'])}; "
         f"Reacher {ceiling(r['r_replay'], r['r_compute'])}"),
        ("the policy's arithmetic alone, per env step (forward + backward)",
         f"Hopper θ_0 {per_step_cost(r['t0_compute'])}; Hopper 1000-step {per_step_cost(r['h_compute'])}; "
         f"Reacher {per_step_cost(r['r_compute'])}"),
        ("raw env.step with random actions / replaying the policy's trajectories, per core (the baselines' own gap)",
         f"Hopper θ_0 {paired(r['raw'], r['replay_theta0'])}; Hopper 1000-step {paired(r['h_raw'], r['h_replay'])}; "
         f"Reacher {paired(r['r_raw'], r['r_replay'])}"),
        ("inline collection (θ after learn) / raw with random actions, per core (not paired)",
         f"wall {pct(r['coll_inline'].rate / r['raw'].rate)}; CPU {cpu_pct(r['coll_inline'], r['raw'])}"),
        ("inline learn / raw with random actions, per core (not paired)",
         f"wall {pct(r['learn_inline'].rate / r['raw'].rate)}; CPU {cpu_pct(r['learn_inline'], r['raw'])}"),
        ("subprocess x1 collection / raw, per core", pct(r["coll_s1"].rate / r["raw"].rate)),
        ("subprocess x2 collection / raw, per core (rate / 2)", pct(r["coll_s2"].rate / 2 / r["raw"].rate)),
        ("**subprocess speedup x2 / x1, collection at θ after learn (target >= 1.9x on 2 cores)**",
         f"{r['coll_s2'].rate / r['coll_s1'].rate:.2f}x"),
        ("subprocess speedup x2 / x1, learn (wall, incl. start-up)", f"{r['learn_s2'].rate / r['learn_s1'].rate:.2f}x"),
        ("subprocess speedup x2 / x1, learn after 1st round", steady_ratio(r["learn_s2"], r["learn_s1"])),
        ("subprocess x2 collection / inline collection", f"{r['coll_s2'].rate / r['coll_inline'].rate:.2f}x"),
    ]


def render(rows: list[Row], derived: list[tuple[str, str]], facts: list[str], load: tuple[tuple, tuple], total_s: float) -> str:
    lines = ["## Throughput (environment steps per second)", "", *facts]
    lines.append(f"- load average (1/5/15 min) at start: {'/'.join(f'{x:.2f}' for x in load[0])}, at end: {'/'.join(f'{x:.2f}' for x in load[1])}")
    lines.append(f"- whole benchmark wall time: {total_s:.1f} s")
    lines += [
        "",
        "| measurement | backend | workers | env steps | wall s | steps/s | steps/s after 1st round | CPU s | steps/CPU-s | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        steady = f"{r.steady:,.0f}" if r.steady is not None else ""
        cpu = f"{r.cpu:.2f} | {r.cpu_rate:,.0f}" if r.cpu else " | "
        lines.append(f"| {r.what} | {r.backend} | {r.workers} | {r.steps} | {r.seconds:.2f} | {r.rate:,.0f} | {steady} | {cpu} | {r.extra} |")
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in derived]
    return "\n".join(lines) + "\n"


def parse_args() -> tuple[argparse.Namespace, int, int, int]:
    """The command line, and the resolved (steps, PPO steps, blocks)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help=f"env steps per raw/NIGT measurement (default {FULL_STEPS}; --quick: {QUICK_STEPS})")
    parser.add_argument("--ppo-steps", type=int, default=None, help=f"PPO learn steps (default {FULL_PPO_STEPS}; --quick: {QUICK_PPO_STEPS})")
    parser.add_argument("--blocks", type=int, default=None, help=f"groups of the paired measurements, for the spread of their ratios (default {FULL_BLOCKS}; --quick: {QUICK_BLOCKS})")
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 1-1.5 minutes)")
    parser.add_argument("--skip-ppo", action="store_true", help="leave out the PPO measurement")
    parser.add_argument(
        "--ppo-threads", type=str, default="default,1",
        help="comma list of torch thread counts for PPO, one measurement each; 'default' = torch's own (default: default,1)",
    )
    parser.add_argument("--out", type=str, default=None, help="also write the Markdown report to this file")
    args = parser.parse_args()
    steps = args.steps or (QUICK_STEPS if args.quick else FULL_STEPS)
    ppo_steps = args.ppo_steps or (QUICK_PPO_STEPS if args.quick else FULL_PPO_STEPS)
    blocks = args.blocks or (QUICK_BLOCKS if args.quick else FULL_BLOCKS)
    if steps < 1 or ppo_steps < 1 or blocks < 1:
        parser.error("--steps, --ppo-steps and --blocks must be >= 1")
    return args, steps, ppo_steps, blocks


def main() -> None:
    args, steps, ppo_steps, blocks = parse_args()

    # gymnasium's "Hopper-v4 is out of date" warning: silenced here; the workers build envs through quiet_make.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*out of date.*")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    env_id = hopper_id()
    facts = machine_facts(env_id)
    print("\n".join(facts), flush=True)
    print(f"- load average at start: {'/'.join(f'{x:.2f}' for x in load_start)}", flush=True)

    rows: list[Row] = []

    def report(row: Row) -> None:
        steady = f", {row.steady:,.0f} steps/s after the 1st round" if row.steady is not None else ""
        cpu = f"; {row.cpu_rate:,.0f} steps per CPU-s" if row.cpu else ""
        print(f"  {row.what} [{row.backend} x{row.workers}]: {row.rate:,.0f} steps/s ({row.steps} steps in {row.seconds:.2f} s{steady}{cpu})", flush=True)

    def run(label: str, fn, *fn_args):
        print(f"measuring: {label} ...", flush=True)
        out = fn(*fn_args)
        row, extra = out if isinstance(out, tuple) else (out, None)
        report(row)
        rows.append(row)
        return row, extra

    # Paired measurements first: raw env.step alternating with inline collection at θ_0 (short trajectories:
    # the fixed cost per gradient), then the same-states trio (the per-step cost).
    print("measuring: inline collection at θ_0 alternating with raw env.step (replay, random actions) ...", flush=True)
    raw, replay_theta0, coll_theta0 = measure_raw_and_theta0(env_id, steps, blocks)
    rows += [raw, replay_theta0, coll_theta0]
    report(raw), report(replay_theta0), report(coll_theta0)
    print("measuring: Hopper 1000-step trajectories, no early termination (lockstep batch / replay / batches of one / random, alternating) ...", flush=True)
    hopper_rows, check = measure_same_states(env_id, {"terminate_when_unhealthy": False}, "Hopper, no early termination", steps, blocks)
    h_raw, h_replay, h_batch, h_single, h_replay_b, h_compute = hopper_rows
    rows += hopper_rows
    for row in hopper_rows:
        report(row)
    facts.append(check)
    reacher = first_makeable("Reacher-v4", "Reacher-v5")
    print(f"measuring: {reacher} 50-step trajectories (lockstep batch / replay / batches of one / random, alternating) ...", flush=True)
    reacher_rows, check = measure_same_states(reacher, {}, reacher, steps, blocks)
    r_raw, r_replay, r_batch, r_single, r_replay_b, r_compute = reacher_rows
    rows += reacher_rows
    for row in reacher_rows:
        report(row)
    facts.append(check)
    print("measuring: Hopper at θ_0 with early termination, in lockstep batches (lockstep batch / replay / batches of one / "
          "random, alternating) ...", flush=True)
    t0_rows, check = measure_same_states(env_id, {}, "Hopper θ_0", steps, blocks, trajectory_steps=14)
    rows += t0_rows
    for row in t0_rows:
        report(row)
    facts.append(check)
    print("measuring: memory per lockstep batch ...", flush=True)
    memory = measure_batch_memory(env_id, 200 if args.quick else 1000)
    for name, value in memory:
        print(f"  {name}: {value}", flush=True)
    print("measuring: per-call costs ...", flush=True)
    fixed = measure_fixed_costs(env_id, 500 if args.quick else 2000)
    for name, value in fixed:
        print(f"  {name}: {value}", flush=True)
    # Collection is timed at θ after the learn run of the same backend: learn(steps) on the simulated clock
    # gives the same θ for every backend (checked below), so the three collection rows sample the same
    # trajectory-length distribution.
    learn_inline, m_inline = run("inline learn", measure_learn, env_id, "inline", None, steps)
    coll_inline, _ = run("inline collection at θ_learn", measure_collect, m_inline, steps, "θ after learn")
    learn_s1, m_s1 = run("subprocess x1 learn", measure_learn, env_id, "subprocess", 1, steps)
    coll_s1, _ = run("subprocess x1 collection at θ_learn", measure_collect, m_s1, steps, "θ after learn")
    learn_s2, m_s2 = run("subprocess x2 learn", measure_learn, env_id, "subprocess", 2, steps)
    coll_s2, _ = run("subprocess x2 collection at θ_learn", measure_collect, m_s2, steps, "θ after learn")
    ppo_rows = []
    if not args.skip_ppo:
        for item in dict.fromkeys(t.strip() for t in args.ppo_threads.split(",") if t.strip()):
            threads = None if item == "default" else int(item)
            ppo_rows.append(run(f"PPO learn, torch threads {item}", measure_ppo, env_id, ppo_steps, threads)[0])

    import numpy as np

    theta = [m.get_flat_params() for m in (m_inline, m_s1, m_s2)]
    same_theta = all(np.array_equal(theta[0], t) for t in theta[1:])
    facts.append(f"- θ after learn identical for inline / subprocess x1 / subprocess x2: {same_theta}")

    named = dict(raw=raw, replay_theta0=replay_theta0, coll_theta0=coll_theta0, h_raw=h_raw, h_replay=h_replay, h_batch=h_batch,
                 h_single=h_single, h_replay_b=h_replay_b, r_raw=r_raw, r_replay=r_replay, r_batch=r_batch, r_single=r_single, r_replay_b=r_replay_b, learn_inline=learn_inline,
                 coll_inline=coll_inline, learn_s1=learn_s1, coll_s1=coll_s1, learn_s2=learn_s2, coll_s2=coll_s2,
                 h_compute=h_compute, r_compute=r_compute, t0_replay=t0_rows[1], t0_batch=t0_rows[2], t0_replay_b=t0_rows[4],
                 t0_compute=t0_rows[5])
    derived = derive(named)
    derived += [(f"memory: {name}", value) for name, value in memory]
    for ppo in ppo_rows:
        tag = ppo.extra.replace("torch ", "")
        derived += [
            (f"inline learn / PPO learn ({tag})", f"{learn_inline.rate / ppo.rate:.2f}x"),
            (f"subprocess x2 learn / PPO learn ({tag})", f"{learn_s2.rate / ppo.rate:.2f}x"),
        ]
    derived += [(f"per-call cost: {name}", value) for name, value in fixed]
    report_md = render(rows, derived, facts, (load_start, os.getloadavg()), time.perf_counter() - t0)
    print()
    print(report_md, end="")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report_md)
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
