"""Where the time goes: one timeline per algorithm on the same agents (the picture in docs/time.md).

Four agents on Pendulum-v1 with compute times h = (1, 1.5, 2, 6) s (agent 3 is a straggler) and communication
times κ_i = 0.5 s, on the simulated clock. Each algorithm records its event trace (``record_trace=True``); the
first ``--seconds`` simulated seconds of each are drawn one panel per algorithm, on a shared time axis, and
written as a tidy CSV too.

Usage::

    python examples/timelines.py --out docs/img/timelines.png --seconds 24
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from sb3_nigt import AFedPG, MaleniaNIGT, RennalaNIGT, SynchronizedNIGT
from sb3_nigt.timeline import plot_timelines, write_trace_csv

ALGORITHMS = {"Rennala NIGT (M = 6)": RennalaNIGT, "Malenia NIGT (S = 6)": MaleniaNIGT,
              "Synchronized NIGT": SynchronizedNIGT, "AFedPG": AFedPG}


def traces(seconds: float) -> dict:
    """The events of each algorithm's run that start before ``seconds``, cut at ``seconds``."""
    out = {}
    for label, algorithm in ALGORITHMS.items():
        model = algorithm("MlpPolicy", "Pendulum-v1", n_agents=4, compute_times=[1, 1.5, 2, 6], communication_times=0.5,
                          round_size=6, horizon=5, seed=0, record_trace=True)
        while model.simulated_time < seconds:
            model.learn(200, reset_num_timesteps=False)
        out[label] = [replace(e, end=min(float(e.end), seconds)) for e in model.trace if float(e.start) < seconds]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/timelines.png")
    parser.add_argument("--seconds", type=float, default=24.0)
    args = parser.parse_args()
    events = traces(args.seconds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_trace_csv(events, out.with_suffix(".csv"))
    plot_timelines(events, out, sharex=True)
    print(f"wrote {out} and {out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
