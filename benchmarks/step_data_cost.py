"""What the per-step data for callbacks costs: bytes in every message and µs per environment step.

Three measurements on Hopper-v4 (11 float64 observations, 3 actions), ``step_data`` off and on alternating so
that a change in the machine's load hits both; the added cost is the median of the paired differences:

1. **Message.** One trajectory (no early termination, ``--steps`` steps) sampled at θ_0, and the pickled size
   and pickle + unpickle CPU time of its :class:`~sb3_nigt.workers.rollout.TrajectoryStats`: bare (no per-step
   data), with the per-step rewards and info dicts as a plain list of dicts, as sent with ``step_data=False``
   (rewards + :class:`~sb3_nigt.workers.rollout.StepInfos`), and as sent with ``step_data=True``, the default
   (plus ``new_obs`` and ``actions``), also per environment step, next to the size of one gradient vector. The
   subprocess and Ray backends pay the pickling once per trajectory; the inline backend sends nothing.
2. **Parts of every backend.** CPU µs per environment step (``time.process_time``, which a busy machine does not
   inflate as it does wall time) of the worker's sampling of one trajectory, keeping the step data or not, and
   of the main process's replay of it to a callback that reads ``self.locals`` at every ``on_step``.
3. **Training.** ``learn()`` of RennalaNIGT (one agent, M = 2, H = 200) on Hopper-v4 without early termination
   (every trajectory lasts 200 steps, so per-step costs dominate the per-round ones) with such a callback, on
   the inline and the subprocess backend: wall-clock and main-process CPU µs per environment step between the
   first and the last ``on_rollout_end`` (the workers' start-up and close left out), the best of ``--repeats``
   runs. On a shared machine the wall-clock figures carry its noise; read the CPU ones and the parts.

Usage::

    .venv/bin/python benchmarks/step_data_cost.py --steps 114 --samples 50 --timesteps 20000 --repeats 3

Targets (docs/rennala_nigt.md, "SB3 integration"): ``step_data=True`` adds at most 64 bytes per Hopper step to every
message ((11 + 3) numbers × 4 bytes = 56, plus pickle framing), and at most 5% to the CPU µs per environment step
of sampling and of training.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import time
import warnings
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=114, help="trajectory length (114: Hopper at θ after learning)")
    parser.add_argument("--pickles", type=int, default=500, help="pickle + unpickle repetitions per variant")
    parser.add_argument("--samples", type=int, default=50, help="sampled and replayed trajectories per setting")
    parser.add_argument("--timesteps", type=int, default=20_000, help="environment steps of each learn() run")
    parser.add_argument("--repeats", type=int, default=3, help="learn() runs per (backend, step_data); the best is kept")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the subprocess backend")
    parser.add_argument("--backends", nargs="+", default=["inline", "subprocess"], choices=["inline", "subprocess"],
                        help="backends of the training measurement")
    parser.add_argument("--skip-training", action="store_true", help="only the message and the parts")
    return parser.parse_args()


def message_costs(steps: int, pickles: int) -> None:
    """Print the pickled size and round-trip time of one trajectory's statistics, per variant."""
    import gymnasium as gym

    from sb3_nigt import RennalaNIGT
    from sb3_nigt.workers.rollout import GradientWorker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = RennalaNIGT("MlpPolicy", "Hopper-v4", seed=0)
        worker = GradientWorker([lambda: gym.make("Hopper-v4", terminate_when_unhealthy=False)], model.policy_class,
                                model.observation_space, model.action_space, model.policy_kwargs, step_data=True)
        stats = worker.sample_batch([(0, 0, 0)], 0, steps)[0].stats
    without = dataclasses.replace(stats, new_obs=None, actions=None)
    variants = {
        "bare (no per-step data)": dataclasses.replace(without, rewards=None, infos=None, terminal_observation=None),
        "rewards + info dicts as a list": dataclasses.replace(without, infos=list(stats.infos or [])),
        "rewards + StepInfos (`step_data=False`)": without,
        "+ new_obs and actions (`step_data=True`, the default)": stats,
    }
    n = stats.n_steps
    blocks = 20
    times: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(blocks):  # the variants alternate, block by block, so that a change in load hits them all
        for label, value in variants.items():
            start = time.process_time()
            for _ in range(max(1, pickles // blocks)):
                pickle.loads(pickle.dumps(value))
            times[label].append(1e6 * (time.process_time() - start) / max(1, pickles // blocks))
    print(f"# TrajectoryStats of one {n}-step Hopper-v4 trajectory; one gradient vector: {8 * model.n_params:,} bytes\n")
    print("| variant | pickled bytes | bytes per step | pickle + unpickle CPU µs (best block) | CPU µs per step |\n"
          "|---|---:|---:|---:|---:|")
    for label, value in variants.items():
        size, micro = len(pickle.dumps(value)), min(times[label])
        print(f"| {label} | {size:,} | {size / n:.1f} | {micro:.0f} | {micro / n:.2f} |")
    added = len(pickle.dumps(stats)) - len(pickle.dumps(without))
    off, on = times["rewards + StepInfos (`step_data=False`)"], times["+ new_obs and actions (`step_data=True`, the default)"]
    print(f"\nstep_data=True adds {added:,} bytes to the message, {added / n:.1f} bytes per environment step, and "
          f"{paired_median(off, on) / n:+.2f} CPU µs per step of pickle + unpickle (median of the {blocks} blocks' differences)\n")


def paired_median(off: list[float], on: list[float]) -> float:
    """The median of ``on[i] − off[i]``: the added cost, robust to the load changing between pairs."""
    import statistics

    return statistics.median(b - a for a, b in zip(off, on))


class ReadsLocals(BaseCallback):
    """Reads the per-step names, as a user's callback would, and stamps the ends of rounds."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[tuple[float, float, int]] = []  # (wall s, this process's CPU s, num_timesteps)
        self.seen = 0.0

    def _on_step(self) -> bool:
        local_vars = self.locals
        self.seen += float(local_vars["rewards"][0])
        if "new_obs" in local_vars:
            self.seen += float(local_vars["new_obs"][0, 0]) + float(local_vars["actions"][0, 0])
        return True

    def _on_rollout_end(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time(), self.num_timesteps))


HORIZON = 200  # environment steps per trajectory (Hopper never terminates here): 400 per round of M = 2


def hopper() -> Any:
    """Hopper-v4 that never terminates early, so every trajectory lasts ``HORIZON`` steps (module-level: the
    subprocess workers rebuild it by reference)."""
    import gymnasium as gym

    return gym.make("Hopper-v4", terminate_when_unhealthy=False)


def timed_learn(backend: str, step_data: bool, timesteps: int, workers: int) -> tuple[float, float]:
    """Wall-clock and main-process CPU µs per environment step of one ``learn(timesteps)``, between its first and
    last ``on_rollout_end``."""
    from sb3_nigt import RennalaNIGT

    options: dict[str, Any] = dict(n_workers=workers) if backend == "subprocess" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = RennalaNIGT("MlpPolicy", hopper, n_agents=1, horizon=HORIZON, round_size=2, seed=0, backend=backend,
                            step_data=step_data, **options)
        callback = ReadsLocals()
        model.learn(timesteps, callback=callback)
    (t0, c0, s0), (t1, c1, s1) = callback.marks[0], callback.marks[-1]
    if s1 <= s0:
        raise ValueError(f"--timesteps: {timesteps} gave fewer than two rounds; give more")
    return 1e6 * (t1 - t0) / (s1 - s0), 1e6 * (c1 - c0) / (s1 - s0)


def component_costs(steps: int, repeats: int) -> None:
    """Print the µs per environment step of the two parts that run on every backend, best of ``repeats``: the
    worker's sampling (one ``steps``-step trajectory, keeping the step data or not) and the main process's replay
    of that trajectory to a callback that reads ``self.locals`` (with the step data or without)."""
    from sb3_nigt import RennalaNIGT
    from sb3_nigt.clock.exact import ZERO
    from sb3_nigt.clock.rounds import Arrival
    from sb3_nigt.workers.rollout import GradientWorker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = RennalaNIGT("MlpPolicy", hopper, n_agents=1, horizon=steps, seed=0)
        workers = {flag: GradientWorker([hopper], model.policy_class, model.observation_space, model.action_space,
                                        model.policy_kwargs, step_data=flag) for flag in (False, True)}
        _, callback = model._setup_learn(10**9, ReadsLocals())
    callback.on_training_start({}, {})
    sample: dict[bool, list[float]] = {False: [], True: []}
    replay: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):  # off and on alternate, so that a change in the machine's load hits both
        for flag, worker in workers.items():
            start = time.process_time()
            stats = worker.sample_batch([(0, 0, 0)], 0, steps)[0].stats
            sample[flag].append(1e6 * (time.process_time() - start) / stats.n_steps)
            start = time.process_time()
            model._replay_arrival(Arrival(ZERO, 0, 0, stats), callback)
            replay[flag].append(1e6 * (time.process_time() - start) / stats.n_steps)
    print(f"# parts of every backend, CPU µs per environment step of one {steps}-step Hopper-v4 trajectory, best of "
          f"{repeats}\n")
    print("| part | step_data=False (best) | step_data=True (best) | added (median of paired differences) |\n"
          "|---|---:|---:|---:|")
    for label, runs in (("worker: sample", sample), ("main: replay to a callback reading the locals", replay)):
        off, on = min(runs[False]), min(runs[True])
        print(f"| {label} | {off:.2f} | {on:.2f} | {paired_median(runs[False], runs[True]):+.2f} |")
    print()


def training_costs(timesteps: int, repeats: int, workers: int, backends: list[str]) -> None:
    """Print the best µs per environment step of training, per backend and step_data setting."""
    print(f"# learn({timesteps}) of RennalaNIGT (n = 1, M = 2, H = {HORIZON}) on Hopper-v4 without early termination, "
          f"best of {repeats} runs; subprocess: {workers} worker(s)\n")
    print("| backend | clock | step_data=False µs/step (best) | step_data=True µs/step (best) | added µs/step (median of "
          "paired differences) | added % |\n|---|---|---:|---:|---:|---:|")
    for backend in backends:
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(repeats):  # off and on alternate, so that a change in the machine's load hits both
            for flag in (False, True):
                runs[flag].append(timed_learn(backend, flag, timesteps, workers))
        for column, clock in ((0, "wall"), (1, "main-process CPU")):
            off, on = [r[column] for r in runs[False]], [r[column] for r in runs[True]]
            added = paired_median(off, on)
            print(f"| {backend} | {clock} | {min(off):.1f} | {min(on):.1f} | {added:+.1f} | {100 * added / min(off):+.1f}% |")


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # Hopper-v4's, once per environment built
    import torch

    torch.set_num_threads(1)  # CPU times of one thread; the workers use one thread each as well
    message_costs(args.steps, args.pickles)
    component_costs(args.steps, args.samples)
    if not args.skip_training:
        training_costs(args.timesteps, args.repeats, args.workers, args.backends)


if __name__ == "__main__":
    main()
