"""Callbacks see PPO's per-step locals, the success rate is logged, and the progress bar counts environment steps."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback, ProgressBarCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_nigt import AFedPG, MaleniaNIGT, RennalaNIGT, SynchronizedNIGT

from step_envs import InfoEnv

ALGORITHMS = [RennalaNIGT, MaleniaNIGT, SynchronizedNIGT, AFedPG]


class StepRecorder(BaseCallback):
    def __init__(self, keys=("rewards", "dones", "infos")):
        super().__init__()
        self.keys = keys
        self.steps: list[dict] = []

    def _on_step(self) -> bool:
        self.steps.append({key: self.locals[key] for key in self.keys} | {"num_timesteps": self.num_timesteps})
        return True


def make(algorithm, env, **kwargs):
    kwargs = dict(n_agents=2, round_size=2, horizon=10, seed=0) | kwargs
    return algorithm("MlpPolicy", env, **kwargs)


@pytest.mark.parametrize("backend", ["inline", "subprocess"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_on_step_sees_the_steps_reward_done_and_info(algorithm, backend):
    model = make(algorithm, lambda: InfoEnv(length=3), backend=backend, **({"n_workers": 1} if backend == "subprocess" else {}))
    recorder = StepRecorder()
    model.learn(12, callback=recorder)
    assert len(recorder.steps) == model.num_timesteps >= 12
    for position, step in enumerate(recorder.steps):
        t = position % 3  # every episode lasts 3 steps, and its on_step calls are consecutive
        assert step["num_timesteps"] == position + 1
        assert step["rewards"].shape == (1,) and step["rewards"][0] == t + 1
        assert step["dones"].dtype == bool and step["dones"].tolist() == [t == 2]
        (info,) = step["infos"]
        assert info["t"] == t and info["source"] == "InfoEnv"  # the environment's own dict
        if t == 2:
            assert info["episode"]["r"] == 6.0 and info["episode"]["l"] == 3
            assert info["TimeLimit.truncated"] is False
            assert info["is_success"] is False
            assert info["terminal_observation"].tolist() == [3.0]
        else:
            assert "episode" not in info


@pytest.mark.parametrize("backend", ["inline", "subprocess"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_new_obs_and_actions_by_default(algorithm, backend):
    # PPO's callbacks read new_obs and actions at every on_step; they come without asking.
    model = make(algorithm, lambda: InfoEnv(length=3), backend=backend, **({"n_workers": 1} if backend == "subprocess" else {}))
    recorder = StepRecorder(keys=("new_obs", "actions", "clipped_actions", "rewards", "env", "self"))
    model.learn(6, callback=recorder)
    assert len(recorder.steps) == model.num_timesteps >= 6
    for position, step in enumerate(recorder.steps):
        # step t observes [t + 1]; at the last step new_obs is the terminal observation
        assert step["new_obs"].dtype == np.float32 and step["new_obs"].shape == (1, 1)
        assert step["new_obs"][0, 0] == position % 3 + 1
        assert step["actions"].dtype == np.float32 and step["actions"].shape == (1, 1)
        assert model.action_space.contains(step["actions"][0])
        assert step["clipped_actions"] is step["actions"]  # the environment's action is already within bounds
        assert step["env"] is model.get_env() and step["self"] is model


def test_step_data_false_leaves_new_obs_and_actions_out():
    model = make(RennalaNIGT, lambda: InfoEnv(length=3), step_data=False)
    assert model.step_data is False
    recorder = KeysRecorder()
    model.learn(6, callback=recorder)
    assert recorder.keys and all("rewards" in keys and not keys & {"new_obs", "actions", "clipped_actions"} for keys in recorder.keys)


def test_load_keeps_the_saved_step_data_unless_told(tmp_path):
    make(RennalaNIGT, lambda: InfoEnv(length=3), step_data=False).save(tmp_path / "off.zip")
    for overrides, expected in (({}, False), ({"step_data": True}, True)):
        model = RennalaNIGT.load(tmp_path / "off.zip", env=InfoEnv(length=3), **overrides)
        assert model.step_data is expected
        recorder = KeysRecorder()
        model.learn(6, callback=recorder, reset_num_timesteps=False)
        assert all(("new_obs" in keys) is expected for keys in recorder.keys)


class KeysRecorder(BaseCallback):
    """Records the names in ``self.locals`` at every ``on_step``."""

    def __init__(self):
        super().__init__()
        self.keys: list[set] = []

    def _on_step(self) -> bool:
        self.keys.append(set(self.locals))
        return True


def test_step_data_leaves_the_parameters_alone():
    on = make(MaleniaNIGT, lambda: InfoEnv(length=3)).learn(30)
    off = make(MaleniaNIGT, lambda: InfoEnv(length=3), step_data=False).learn(30)
    np.testing.assert_array_equal(on.get_flat_params(), off.get_flat_params())


class NormalizedObservations(BaseCallback):
    """Records each step's ``new_obs`` next to the raw observation normalized by VecNormalize's statistics of now."""

    def __init__(self):
        super().__init__()
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []

    def _on_step(self) -> bool:
        raw = np.array([[self.locals["infos"][0]["t"] + 1.0]], dtype=np.float32)  # InfoEnv: step t observes [t + 1]
        expected = self.model.get_vec_normalize_env().normalize_obs(raw)
        self.pairs.append((np.array(self.locals["new_obs"]), expected))
        return True


def test_new_obs_are_normalized_under_vecnormalize():
    # PPO's new_obs come out of VecNormalize.step: normalized, as the policy sees them.
    env = VecNormalize(DummyVecEnv([lambda: InfoEnv(length=3)]), norm_reward=False)
    model = make(RennalaNIGT, env, n_agents=1, round_size=1)
    recorder = NormalizedObservations()
    model.learn(15, callback=recorder)
    assert len(recorder.pairs) >= 15
    for new_obs, expected in recorder.pairs:
        np.testing.assert_allclose(new_obs, expected, rtol=1e-6, atol=1e-6)
    assert any(abs(float(new_obs[0, 0])) < 1.0 for new_obs, _ in recorder.pairs)  # not the raw 1, 2, 3


def test_horizon_cut_is_a_truncation():
    model = make(RennalaNIGT, lambda: InfoEnv(length=50), horizon=4)
    recorder = StepRecorder()
    model.learn(8, callback=recorder)
    last = recorder.steps[3]
    assert last["dones"].tolist() == [True] and last["infos"][0]["TimeLimit.truncated"] is True
    assert "is_success" not in last["infos"][0]


@pytest.mark.parametrize("length, rate", [(2, 1.0), (3, 0.0)])
def test_is_success_reaches_success_rate(length, rate, tmp_path):
    from stable_baselines3.common.logger import configure

    model = make(RennalaNIGT, lambda: InfoEnv(length=length))
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(20, log_interval=1)  # a table every round (the default paces tables by 2,048 steps)
    assert len(model.ep_success_buffer) > 0 and np.mean(model.ep_success_buffer) == rate
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    assert "rollout/success_rate" in header


class CountingBar(ProgressBarCallback):
    def _on_training_start(self) -> None:
        super()._on_training_start()
        self.bar = self.pbar


@pytest.mark.parametrize("n_envs", [1, 3])
def test_progress_bar_counts_environment_steps(n_envs):
    env = DummyVecEnv([lambda: InfoEnv(length=3) for _ in range(n_envs)])
    model = make(MaleniaNIGT if n_envs > 1 else RennalaNIGT, env, n_agents=n_envs)
    bar = CountingBar()
    model.learn(12, callback=bar)
    assert bar.bar.n == model.num_timesteps  # not num_envs times too many


def test_progress_bar_flag_counts_environment_steps(monkeypatch):
    seen = []
    original = ProgressBarCallback._on_training_end

    def spy(self):
        seen.append(self.pbar.n)
        original(self)

    monkeypatch.setattr(ProgressBarCallback, "_on_training_end", spy)
    env = DummyVecEnv([lambda: InfoEnv(length=3) for _ in range(3)])
    model = make(MaleniaNIGT, env, n_agents=3)
    model.learn(12, progress_bar=True)
    assert seen == [model.num_timesteps]


def test_nan_observation_names_observations():
    model = make(RennalaNIGT, lambda: InfoEnv(length=5, nan_at=1))
    before = model.get_flat_params().copy()
    with pytest.raises(ValueError, match=r"^observations: .*non-finite"):
        model.learn(20)
    assert np.array_equal(model.get_flat_params(), before)


def test_afedpg_nan_reward_names_the_servers_round():
    from helpers import ConstantBandit

    def reward(a: float) -> float:
        return float("nan") if a > 0.0 else 0.0

    model = make(AFedPG, lambda: ConstantBandit(reward, length=1), horizon=1)
    with pytest.raises(ValueError, match=r"^reward: .*AFedPG round \d+ \(server update \d+\)") as info:
        model.learn(200)
    assert ", round 0, " not in str(info.value)


class StatisticsAtStep(BaseCallback):
    """Records VecNormalize's observation count at the first on_step of each trajectory."""

    def __init__(self):
        super().__init__()
        self.counts: list[float] = []

    def _on_step(self) -> bool:
        if self.locals["infos"][0]["t"] == 0:
            self.counts.append(float(self.model.get_vec_normalize_env().obs_rms.count))
        return True


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_vecnormalize_statistics_include_the_trajectory_before_its_on_step(algorithm):
    env = VecNormalize(DummyVecEnv([lambda: InfoEnv(length=3)]), norm_reward=False)
    model = make(algorithm, env, n_agents=1, round_size=1)
    recorder = StatisticsAtStep()
    model.learn(15, callback=recorder)
    # Every trajectory's 3 observations are merged before its first on_step (the others merge a whole round's
    # before replaying it): at trajectory j's first step the count already holds trajectories 0..j.
    assert len(recorder.counts) >= 3
    for j, count in enumerate(recorder.counts):
        assert count >= 3 * (j + 1), (j, recorder.counts)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_observation_warmup_reaches_the_log(algorithm, tmp_path):
    from stable_baselines3.common.logger import configure

    env = VecNormalize(DummyVecEnv([lambda: InfoEnv(length=3)]), norm_reward=False)
    model = make(algorithm, env, n_agents=1, round_size=1)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(30, log_interval=1)  # a table every round
    lines = (tmp_path / "progress.csv").read_text().splitlines()
    column = lines[0].split(",").index("train/observation_warmup")
    values = [line.split(",")[column] for line in lines[1:]]
    assert values[0] == "1" and all(v in ("", "0") for v in values[1:])


def test_step_infos_round_trip_compact_and_faithful():
    import pickle

    from sb3_nigt.workers.rollout import StepInfos

    floats = [{"x": float(t), "y": np.float64(t / 2), "z": np.float32(t)} for t in range(50)]
    infos = StepInfos(floats)
    assert infos._columns is not None  # stored as arrays
    copy = pickle.loads(pickle.dumps(infos))
    assert len(copy) == 50 and list(copy) == floats and copy[-1] == floats[-1]
    assert [type(v) for v in copy[3].values()] == [float, np.float64, np.float32]
    assert len(pickle.dumps(infos)) < len(pickle.dumps(floats))
    mixed = [{"t": 0, "source": "a"}, {"t": 1, "source": "b"}]  # not all floats: kept as the dicts themselves
    assert StepInfos(mixed)._dicts is mixed and StepInfos(mixed)[1] is mixed[1]
    ragged = [{"x": 1.0}, {"x": 1.0, "extra": 2.0}]
    assert list(StepInfos(ragged)) == ragged
