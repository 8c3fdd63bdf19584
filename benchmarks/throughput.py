"""Throughput benchmark: environment steps per second of gradient collection on Hopper.

Measures, in one run, and prints a Markdown table:

1. the raw ``env.step`` rate with random actions in the main process (the physical limit per core);
2. RennalaNIGT with ``backend="inline"``: ``model.learn`` rate (wall clock, and after the first round) and the
   collection-only rate (``Collector.collect`` timed directly), and its ratio to the raw rate. Collection is
   timed at θ after the learn run (the same θ for every backend on the simulated clock; checked), and once
   more, inline, at the initial θ_0, whose very short trajectories expose the fixed cost per gradient;
3. the same with ``backend="subprocess"`` and ``n_workers`` = 1 and 2 (worker start-up excluded from the
   collection-only rate), and the speedup of 2 workers over 1;
4. SB3 PPO's ``learn`` rate on the same environment (default hyperparameters, DummyVecEnv, one env, CPU), with
   torch's default thread count and with one thread (``--ppo-threads``): with 2 threads on a busy machine
   OpenMP oversubscription can slow PPO several-fold, so both are shown.

RennalaNIGT settings: n_agents=10, compute_times="sqrt", batch_size=20, seed=0, simulated clock.
Every figure printed is measured in this run; nothing is hard-coded.

Usage::

    .venv/bin/python benchmarks/throughput.py                 # full run, about 2-4 minutes on 2 free cores
    .venv/bin/python benchmarks/throughput.py --quick         # smoke run, about 30 s
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
from dataclasses import dataclass
from typing import Optional

FULL_STEPS = 100_000  # env steps per NIGT / raw measurement in the full run
FULL_PPO_STEPS = 20_480  # 10 PPO rollouts of 2048 steps
QUICK_STEPS = 12_000
QUICK_PPO_STEPS = 2_048

NIGT_KWARGS = dict(n_agents=10, compute_times="sqrt", batch_size=20, seed=0)


@dataclass
class Row:
    what: str
    backend: str
    workers: str
    steps: int
    seconds: float
    extra: str = ""
    steady: Optional[float] = None  # learn only: steps/s after the first round (start-up excluded)

    @property
    def rate(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")


def hopper_id() -> str:
    """Hopper-v4 where it can be made, else Hopper-v5."""
    import gymnasium as gym

    for env_id in ("Hopper-v4", "Hopper-v5"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gym.make(env_id).close()
            return env_id
        except Exception as exc:  # noqa: BLE001 - report and fall back
            print(f"note: gym.make({env_id!r}) failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    raise RuntimeError("neither Hopper-v4 nor Hopper-v5 can be made (is mujoco installed?)")


# --------------------------------------------------------------------------------------------- measurements
def measure_raw(env_id: str, steps: int) -> Row:
    """Random actions, reset on termination/truncation, main process, one core."""
    env = quiet_make(env_id)
    env.action_space.seed(0)
    env.reset(seed=0)
    episodes = 0
    for _ in range(min(1000, steps)):  # warm-up, untimed
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    env.reset(seed=1)
    sample, step, reset = env.action_space.sample, env.step, env.reset
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = step(sample())
        if terminated or truncated:
            reset()
            episodes += 1
    seconds = time.perf_counter() - start
    env.close()
    return Row("raw env.step, random actions", "main process", "1", steps, seconds, f"{steps / max(episodes, 1):.0f} steps/episode")


def measure_same_states(env_id: str, steps: int) -> tuple[Row, Row]:
    """Per-step efficiency on comparable states: Hopper without early termination, so every trajectory (random
    actions or the policy's) lasts the full 1000-step time limit and resets are equally rare.

    Runs the library's own per-job code (:class:`GradientWorker`) in this process, with torch on one thread.
    """
    import torch as th

    from sb3_nigt.common.envs import EnvFactory
    from sb3_nigt.common.estimator import GradientWorker, Job
    from sb3_nigt.policies import NIGTPolicy

    from sb3_nigt.common.backends import single_threaded_torch

    factory = EnvFactory(env_id, {"terminate_when_unhealthy": False})
    probe = quiet_make_factory(factory)
    th.manual_seed(0)
    worker = GradientWorker([functools.partial(quiet_make_factory, factory)], NIGTPolicy, probe.observation_space, probe.action_space, {})
    horizon = probe.spec.max_episode_steps or 1000
    n_jobs = max(1, steps // horizon)
    with single_threaded_torch():  # as in every worker; restored afterwards (PPO below uses torch's default)
        start = time.perf_counter()
        done = sum(worker.run(Job(0, 0, k, k, 0, horizon, 0.99)).n_steps for k in range(n_jobs))
        collect_s = time.perf_counter() - start
    worker.close()
    probe.action_space.seed(0)
    probe.reset(seed=0)
    start = time.perf_counter()
    for _ in range(done):
        _, _, terminated, truncated, _ = probe.step(probe.action_space.sample())
        if terminated or truncated:
            probe.reset()
    raw_s = time.perf_counter() - start
    probe.close()
    note = f"no early termination: {horizon} steps/trajectory"
    return (
        Row("raw env.step, random actions, no early termination", "main process", "1", done, raw_s, note),
        Row("GradientWorker.run (rollout + g_H), no early termination", "main process", "1", done, collect_s, note),
    )


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
    start = time.perf_counter()
    model.learn(steps, callback=marker)
    end = time.perf_counter()
    rounds = model.n_rounds
    steady = None
    if marker.mark is not None and model.num_timesteps > marker.mark[1]:
        steady = (model.num_timesteps - marker.mark[1]) / (end - marker.mark[0])
    extra = f"{rounds} rounds, {model.num_timesteps / max(rounds * NIGT_KWARGS['batch_size'], 1):.0f} steps/gradient"
    if backend == "subprocess":
        extra += "; wall s incl. worker start-up"
    row = Row("RennalaNIGT learn", backend, str(n_workers or 1), model.num_timesteps, end - start, extra, steady)
    return row, model


def measure_collect(model, steps: int, label: str) -> Row:
    """Collection only: ``collector.collect`` timed directly at the model's θ; start-up and a warm-up round excluded."""
    params = model.get_flat_params()
    collector = model._make_collector()
    try:
        warm_start = time.perf_counter()
        collector.start()
        collector.collect(params, model._make_rule(model.batch_size), 0, 0.0)  # builds the envs in the workers
        warmup = time.perf_counter() - warm_start
        round_index, total, clock, busy = 1, 0, 0.0, 0.0
        start = time.perf_counter()
        while total < steps:
            result = collector.collect(params, model._make_rule(model.batch_size), round_index, clock)
            total += result.n_steps
            busy += sum(a.result.seconds for a in result.arrivals)
            clock = result.end_time
            round_index += 1
        seconds = time.perf_counter() - start
    finally:
        collector.close()
    rounds = round_index - 1
    n_workers = model.n_workers or 1
    extra = (
        f"{rounds} rounds, {total / (rounds * model.batch_size):.0f} steps/gradient; "
        f"workers busy {100 * busy / (n_workers * seconds):.0f}% of wall (time inside GradientWorker.run); "
        f"start-up + 1st round {warmup:.2f} s excluded"
    )
    return Row(f"RennalaNIGT collection only, {label}", model.backend, str(model.n_workers or 1), total, seconds, extra)


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

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return [
        f"- os.cpu_count(): {os.cpu_count()} (usable by this process: {affinity})",
        f"- platform: {platform.platform()}; CPU: {platform.processor() or platform.machine()}",
        f"- python {platform.python_version()}, torch {torch.__version__} (threads {torch.get_num_threads()}), "
        f"numpy {numpy.__version__}, mujoco {mujoco.__version__}, gymnasium {gymnasium.__version__}, "
        f"stable-baselines3 {stable_baselines3.__version__}, sb3_nigt {sb3_nigt.__version__}",
        f"- env: {env_id}; RennalaNIGT {', '.join(f'{k}={v!r}' for k, v in NIGT_KWARGS.items())}, simulated clock",
    ]


def render(rows: list[Row], derived: list[tuple[str, str]], facts: list[str], load: tuple[tuple, tuple], total_s: float) -> str:
    lines = ["## Throughput (environment steps per second)", "", *facts]
    lines.append(f"- load average (1/5/15 min) at start: {'/'.join(f'{x:.2f}' for x in load[0])}, at end: {'/'.join(f'{x:.2f}' for x in load[1])}")
    lines.append(f"- whole benchmark wall time: {total_s:.1f} s")
    lines += [
        "",
        "| measurement | backend | workers | env steps | wall s | steps/s | steps/s after 1st round | notes |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        steady = f"{r.steady:,.0f}" if r.steady is not None else ""
        lines.append(f"| {r.what} | {r.backend} | {r.workers} | {r.steps} | {r.seconds:.2f} | {r.rate:,.0f} | {steady} | {r.extra} |")
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in derived]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help=f"env steps per raw/NIGT measurement (default {FULL_STEPS}; --quick: {QUICK_STEPS})")
    parser.add_argument("--ppo-steps", type=int, default=None, help=f"PPO learn steps (default {FULL_PPO_STEPS}; --quick: {QUICK_PPO_STEPS})")
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 30 s)")
    parser.add_argument("--skip-ppo", action="store_true", help="leave out the PPO measurement")
    parser.add_argument(
        "--ppo-threads", type=str, default="default,1",
        help="comma list of torch thread counts for PPO, one measurement each; 'default' = torch's own (default: default,1)",
    )
    parser.add_argument("--out", type=str, default=None, help="also write the Markdown report to this file")
    args = parser.parse_args()
    steps = args.steps or (QUICK_STEPS if args.quick else FULL_STEPS)
    ppo_steps = args.ppo_steps or (QUICK_PPO_STEPS if args.quick else FULL_PPO_STEPS)
    if steps < 1 or ppo_steps < 1:
        parser.error("--steps and --ppo-steps must be >= 1")

    # gymnasium's "Hopper-v4 is out of date" warning: silenced here; the workers build envs through quiet_make.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*out of date.*")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    env_id = hopper_id()
    facts = machine_facts(env_id)
    print("\n".join(facts), flush=True)

    rows: list[Row] = []

    def run(label: str, fn, *fn_args):
        print(f"measuring: {label} ...", end=" ", flush=True)
        out = fn(*fn_args)
        row, extra = out if isinstance(out, tuple) else (out, None)
        steady = f", {row.steady:,.0f} steps/s after the 1st round" if row.steady is not None else ""
        print(f"{row.rate:,.0f} steps/s ({row.steps} steps in {row.seconds:.2f} s{steady})", flush=True)
        rows.append(row)
        return row, extra

    # Collection is timed at θ after the learn run of the same backend: learn(steps) on the simulated clock
    # gives the same θ for every backend (checked below), so the three collection rows sample the same
    # trajectory-length distribution. A row at the initial θ_0 (short episodes) shows the per-gradient overhead.
    raw, _ = run("raw env.step", measure_raw, env_id, steps)
    print("measuring: same states, no early termination ...", flush=True)
    same_raw, same_collect = measure_same_states(env_id, steps)
    rows += [same_raw, same_collect]
    learn_inline, m_inline = run("inline learn", measure_learn, env_id, "inline", None, steps)
    coll_theta0, _ = run("inline collection at θ_0", measure_collect, make_nigt(env_id, "inline", None), max(steps // 3, 1), "θ_0 (initial)")
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

    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    steady_ratio = lambda a, b: f"{a.steady / b.steady:.2f}x" if a.steady and b.steady else "n/a"  # noqa: E731
    derived = [
        ("inline collection (θ after learn) / raw, per core (target >= 85%)", pct(coll_inline.rate / raw.rate)),
        ("inline collection (θ_0) / raw, per core", pct(coll_theta0.rate / raw.rate)),
        ("rollout + g_H / raw on the same (non-terminating) states, per core", pct(same_collect.rate / same_raw.rate)),
        ("inline learn / raw, per core", pct(learn_inline.rate / raw.rate)),
        ("subprocess x1 collection / raw, per core", pct(coll_s1.rate / raw.rate)),
        ("subprocess x2 collection / raw, per core (rate / 2)", pct(coll_s2.rate / 2 / raw.rate)),
        ("subprocess speedup x2 / x1, collection (target >= 1.8x on 2 cores)", f"{coll_s2.rate / coll_s1.rate:.2f}x"),
        ("subprocess speedup x2 / x1, learn (wall, incl. start-up)", f"{learn_s2.rate / learn_s1.rate:.2f}x"),
        ("subprocess speedup x2 / x1, learn after 1st round", steady_ratio(learn_s2, learn_s1)),
        ("subprocess x2 collection / inline collection", f"{coll_s2.rate / coll_inline.rate:.2f}x"),
    ]
    for ppo in ppo_rows:
        tag = ppo.extra.replace("torch ", "")
        derived += [
            (f"inline learn / PPO learn ({tag})", f"{learn_inline.rate / ppo.rate:.2f}x"),
            (f"subprocess x2 learn / PPO learn ({tag})", f"{learn_s2.rate / ppo.rate:.2f}x"),
        ]
    report = render(rows, derived, facts, (load_start, os.getloadavg()), time.perf_counter() - t0)
    print()
    print(report, end="")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
