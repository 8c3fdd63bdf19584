"""The experiments' evaluation of the current θ: sampled from π_θ by default, seeded, and apart from training."""

from __future__ import annotations

import pytest
import torch

from sb3_nigt.experiments import EXPERIMENTS
from sb3_nigt.experiments.evaluation import Evaluator, eval_env_factories, eval_env_labels
from sb3_nigt.experiments.runner import RunSpec, build_model


def _train(deterministic, seed=3):
    """Rennala NIGT on Reacher for 6 simulated seconds (the smoke settings of `comm`), evaluated at 0, 3 and 6 s;
    returns (θ bytes, evaluation rows, the global torch stream's next draw)."""
    experiment = EXPERIMENTS["comm"].smoke()
    spec = RunSpec(experiment="comm", phase="report", algorithm="rennala", n_agents=3, alpha=2.0**-6, seed=seed,
                   seconds=6.0, round_size=4)
    model = build_model(experiment, spec)
    evaluator = Evaluator([0.0, 3.0, 6.0], eval_env_factories(experiment, 3), eval_env_labels(experiment, 3),
                          episodes=2, seed=seed, deterministic=deterministic)
    torch.manual_seed(12345)
    model.learn(10_000, callback=evaluator)
    after = torch.rand(1).item()  # the global torch stream after training: evaluation must leave it as it was
    theta = model.get_flat_params().tobytes()
    model.close()
    return theta, evaluator.rows, after


def test_sampled_evaluation_leaves_training_and_the_global_stream_untouched_and_repeats_exactly():
    # The mean-action evaluation draws no noise at all: a sampled one that touched training would change θ.
    theta_mean, mean_action, after_mean = _train(True)
    theta, sampled, after = _train(False)
    theta_again, sampled_again, _ = _train(False)
    assert theta == theta_mean and after == after_mean
    assert theta_again == theta and sampled_again == sampled
    assert [row[0] for row in sampled] == [0.0, 3.0, 6.0]
    assert [row[4] for row in sampled] != [row[4] for row in mean_action]


def test_the_default_is_sampled_and_part_of_the_cache_key():
    from dataclasses import replace

    from sb3_nigt.experiments.cache import settings_digest

    experiment = EXPERIMENTS["comm"]
    assert experiment.eval_deterministic is False
    assert settings_digest(experiment) != settings_digest(replace(experiment, eval_deterministic=True))


@pytest.mark.parametrize("episodes", [0, -1])
def test_bad_episode_counts_are_refused(episodes):
    with pytest.raises(ValueError, match="episodes"):
        Evaluator([0.0, 1.0], [], [], episodes=episodes, seed=0)
