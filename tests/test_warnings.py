"""The library's warnings name the user's line, for every algorithm (AFedPG's __init__ adds a frame)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from sb3_nigt import AFedPG, MaleniaNIGT, RennalaNIGT, SynchronizedNIGT


@pytest.mark.parametrize("algorithm", [RennalaNIGT, MaleniaNIGT, SynchronizedNIGT, AFedPG])
@pytest.mark.parametrize("case", ["norm_reward", "net_arch_vf", "time_scale", "budget"])
def test_warning_points_at_the_callers_line(algorithm, case):
    kwargs = dict(n_agents=2, horizon=5, seed=0)
    if algorithm.uses_round_size:
        kwargs["round_size"] = 2
    env = "Pendulum-v1"
    if case == "norm_reward":
        env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1))
    elif case == "net_arch_vf":
        kwargs["policy_kwargs"] = dict(net_arch=dict(pi=[8], vf=[8]))
    elif case == "time_scale":
        kwargs["time_scale"] = 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = algorithm("MlpPolicy", env, **kwargs)
        theta_0 = model.get_flat_params().copy()
        if case == "budget":
            model.learn(1)
    ours = [w for w in caught if issubclass(w.category, UserWarning) and "sb3_nigt" not in w.filename
            and "site-packages" not in w.filename]
    if case == "budget" and algorithm is AFedPG:
        # AFedPG updates on every gradient: a one-step budget still updates θ, so nothing warns about it.
        assert not caught, [(w.filename, str(w.message)[:60]) for w in caught]
        assert not np.array_equal(model.get_flat_params(), theta_0)
        return
    assert ours, [(w.filename, str(w.message)[:60]) for w in caught]
    assert all(w.filename == __file__ for w in ours)
