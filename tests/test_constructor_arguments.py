"""Policy arguments, observation and action spaces, argument types, learning-rate schedules, loading another
algorithm's file, the budget warning and the constructors' signatures."""

from __future__ import annotations

import inspect
import math
import typing
import warnings
from typing import Optional

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from torch import nn

from sb3_nigt import AFedPG, MaleniaNIGT, NIGTPolicy, RennalaNIGT, SynchronizedNIGT
from sb3_nigt.algorithms.base import NIGTAlgorithm

TINY = dict(round_size=2, horizon=5, n_agents=2, seed=0, policy_kwargs=dict(net_arch=[8]))
ALGORITHMS = [RennalaNIGT, MaleniaNIGT, SynchronizedNIGT, AFedPG]


def tiny(cls=RennalaNIGT, env="Pendulum-v1", policy="MlpPolicy", **kwargs):
    config = dict(TINY)
    if not cls.uses_round_size:  # SynchronizedNIGT and AFedPG have no M (giving one warns)
        del config["round_size"]
    config.update(kwargs)
    return cls(policy, env, **config)


# ---------------------------------------------------------------------------------------------- net_arch
@pytest.mark.parametrize("ignored", [["vf"], ["qf"], ["vf", "qf"]])
def test_net_arch_dict_form_uses_pi_and_warns_that_vf_qf_are_ignored(ignored):
    net_arch = dict(pi=[8, 4], **{key: [32] for key in ignored})
    with pytest.warns(UserWarning, match=r"^net_arch: .*" + ".*".join(ignored) + ".*ignored"):
        model = tiny(policy_kwargs=dict(net_arch=net_arch))
    assert model.policy.net_arch == [8, 4]
    assert model.policy_kwargs["net_arch"] == [8, 4]  # what workers and saves get: no second warning there
    linear = [m for m in model.policy.latent if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linear] == [8, 4]


def test_net_arch_dict_form_with_pi_only_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tiny(policy_kwargs=dict(net_arch=dict(pi=[6])))
    assert model.policy.net_arch == [6]


def test_net_arch_warning_points_at_the_callers_line():
    with pytest.warns(UserWarning, match="^net_arch") as record:
        tiny(policy_kwargs=dict(net_arch=dict(pi=[8], vf=[8])))
    assert any(w.filename == __file__ for w in record)


def test_net_arch_dict_form_learns_saves_and_loads(tmp_path):
    with pytest.warns(UserWarning, match="^net_arch"):
        model = tiny(policy_kwargs=dict(net_arch=dict(pi=[8], vf=[64, 64])))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # workers and load see the list form: no warning again
        model.learn(3 * 2 * 5)
        model.save(tmp_path / "model.zip")
        loaded = RennalaNIGT.load(tmp_path / "model.zip")
    assert np.array_equal(loaded.get_flat_params(), model.get_flat_params())
    assert loaded.policy.net_arch == [8]


def test_net_arch_empty_list_is_a_linear_policy():
    model = tiny(policy_kwargs=dict(net_arch=[]))
    assert not any(isinstance(m, nn.Linear) for m in model.policy.latent)


def test_nigt_policy_itself_checks_net_arch_and_activation_fn():
    env = gym.make("Pendulum-v1")
    with pytest.raises(ValueError, match=r"^net_arch:"):
        NIGTPolicy(env.observation_space, env.action_space, None, net_arch=[0])
    with pytest.raises(ValueError, match=r"^activation_fn:"):
        NIGTPolicy(env.observation_space, env.action_space, None, activation_fn="tanh")
    with pytest.warns(UserWarning, match="^net_arch"):
        policy = NIGTPolicy(env.observation_space, env.action_space, None, net_arch=dict(pi=[3], vf=[5]))
    assert policy.net_arch == [3]


def test_activation_fn_class_is_accepted():
    model = tiny(policy_kwargs=dict(net_arch=[8], activation_fn=nn.ReLU))
    assert any(isinstance(m, nn.ReLU) for m in model.policy.latent)


# ---------------------------------------------------------------------------------------------- policy
@pytest.mark.parametrize(
    "policy",
    [
        PPO.policy_aliases["MlpPolicy"],
        SAC.policy_aliases["MlpPolicy"],
        ActorCriticPolicy,
        BasePolicy,
        nn.Module,
        NIGTPolicy(gym.make("Pendulum-v1").observation_space, gym.make("Pendulum-v1").action_space, None),  # instance
        "CnnPolicy",
        "MultiInputPolicy",
        "mlppolicy",
    ],
    ids=["ppo-MlpPolicy", "sac-MlpPolicy", "ActorCriticPolicy", "BasePolicy", "nn.Module", "instance", "CnnPolicy",
         "MultiInputPolicy", "lowercase"],
)
@pytest.mark.parametrize("cls", ALGORITHMS, ids=lambda c: c.__name__)
def test_foreign_policy_is_refused_naming_the_accepted_ones(cls, policy):
    with pytest.raises(ValueError, match=r"^policy: .*'MlpPolicy'.*NIGTPolicy"):
        tiny(cls, policy=policy)


def test_a_nigt_policy_subclass_is_accepted():
    class MyPolicy(NIGTPolicy):
        pass

    model = tiny(policy=MyPolicy)
    assert type(model.policy) is MyPolicy


def test_policy_aliases_are_annotated_as_in_sb3():
    hints = typing.get_type_hints(NIGTAlgorithm)
    assert hints["policy_aliases"] == typing.ClassVar[dict[str, type[BasePolicy]]]
    assert NIGTAlgorithm.policy_aliases == {"MlpPolicy": NIGTPolicy}


# ------------------------------------------------------------------------------------ BatchNorm layers
class BatchNormExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space: spaces.Box):
        super().__init__(observation_space, features_dim=int(observation_space.shape[0]))
        self.norm = nn.BatchNorm1d(self.features_dim)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.norm(observations)


class InstanceNormExtractor(BatchNormExtractor):
    def __init__(self, observation_space: spaces.Box):
        super().__init__(observation_space)
        self.norm = nn.InstanceNorm1d(self.features_dim, track_running_stats=True)


class LayerNormExtractor(BatchNormExtractor):
    def __init__(self, observation_space: spaces.Box):
        super().__init__(observation_space)
        self.norm = nn.LayerNorm(self.features_dim)


class BatchNormPolicy(NIGTPolicy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.latent = nn.Sequential(nn.BatchNorm1d(self.latent[0].in_features), *self.latent)


@pytest.mark.parametrize("extractor", [BatchNormExtractor, InstanceNormExtractor])
def test_a_features_extractor_with_running_statistics_is_refused(extractor):
    with pytest.raises(ValueError, match=r"^policy_kwargs: .*(BatchNorm1d|InstanceNorm1d)"):
        tiny(policy_kwargs=dict(features_extractor_class=extractor))


def test_a_batch_norm_activation_is_refused():
    with pytest.raises(ValueError, match=r"^policy_kwargs: .*LazyBatchNorm1d"):
        tiny(policy_kwargs=dict(net_arch=[8], activation_fn=nn.LazyBatchNorm1d))


def test_a_policy_class_with_batch_norm_is_refused():
    with pytest.raises(ValueError, match=r"^policy: .*BatchNorm1d"):
        tiny(policy=BatchNormPolicy)


def test_layer_norm_is_accepted():
    model = tiny(policy_kwargs=dict(features_extractor_class=LayerNormExtractor))
    model.learn(2 * 2 * 5)
    assert model.n_rounds >= 2


# --------------------------------------------------------------------------------------------- spaces
class SpaceEnv(gym.Env):
    """A one-step environment with the given spaces (a module-level class, so it pickles)."""

    def __init__(self, observation_space: gym.Space, action_space: Optional[gym.Space] = None):
        self.observation_space = observation_space
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32) if action_space is None else action_space

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


FLAT = spaces.Box(-1.0, 1.0, (3,), np.float32)


@pytest.mark.parametrize(
    "observation_space, message",
    [
        (spaces.Box(0, 255, (16, 16, 3), np.uint8), "image"),  # channels last: SB3 would transpose it
        (spaces.Box(0, 255, (1, 16, 16), np.uint8), "image"),
        (spaces.Box(-1.0, 1.0, (4, 4), np.float32), "2 dimensions"),
        (spaces.Box(0.0, 1.0, (3, 8, 8), np.float32), "3 dimensions"),
        (spaces.Dict({"a": FLAT}), "Dict"),
        (spaces.Dict({"a": spaces.Dict({"b": FLAT})}), "Dict"),  # nested: SB3 raises NotImplementedError
        (spaces.Tuple((FLAT, FLAT)), "Tuple"),
        (spaces.Discrete(3), "Box"),
    ],
    ids=["image-hwc", "image-chw", "box-2d", "box-3d-float", "dict", "nested-dict", "tuple", "discrete"],
)
@pytest.mark.parametrize("cls", [RennalaNIGT, AFedPG], ids=lambda c: c.__name__)
def test_non_flat_observation_spaces_are_refused_with_our_value_error(cls, observation_space, message):
    with pytest.raises(ValueError, match=rf"^observation_space: .*{message}"):
        tiny(cls, env=lambda: SpaceEnv(observation_space))


def test_an_image_space_is_refused_by_the_policy_too():
    with pytest.raises(ValueError, match=r"^observation_space: .*image"):
        NIGTPolicy(spaces.Box(0, 255, (8, 8, 1), np.uint8), spaces.Box(-1.0, 1.0, (1,), np.float32), None)


@pytest.mark.parametrize(
    "low, high",
    [([-np.inf, -1.0], [1.0, 1.0]), ([-1.0, -1.0], [1.0, np.inf]), ([-np.inf, -np.inf], [np.inf, np.inf]),
     ([-1.0, np.nan], [1.0, 1.0])],
    ids=["low-inf", "high-inf", "unbounded", "nan"],
)
def test_infinite_or_nan_action_bounds_are_refused_with_our_value_error(low, high):
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    # Set afterwards: gymnasium refuses a NaN bound itself, but a space built otherwise (or edited) may hold one.
    action_space.low, action_space.high = np.array(low, np.float32), np.array(high, np.float32)
    with pytest.raises(ValueError, match=r"^action_space: .*finite"):
        tiny(env=lambda: SpaceEnv(FLAT, action_space))


def test_a_discrete_action_space_is_refused():
    with pytest.raises(ValueError, match=r"^action_space: .*action space"):
        tiny(env=lambda: SpaceEnv(FLAT, spaces.Discrete(2)))


def test_a_flat_box_with_finite_bounds_is_accepted():
    model = tiny(env=lambda: SpaceEnv(FLAT))
    model.learn(2 * 2)
    assert model.observation_space == FLAT


# ------------------------------------------------------------------------------------ argument types
@pytest.mark.parametrize("scalar", [np.float32, np.float64], ids=["float32", "float64"])
def test_numpy_scalars_are_accepted_and_stored_as_python_floats(scalar):
    model = tiny(learning_rate=scalar(0.5), eta=scalar(0.5), gamma=scalar(0.9), round_size=np.int64(2))
    for name, value in [("learning_rate", 0.5), ("eta", 0.5), ("momentum", 0.5), ("gamma", 0.9)]:
        assert type(getattr(model, name)) is float, name
        assert getattr(model, name) == pytest.approx(value)
    assert type(model.round_size) is int and type(model.batch_size) is int
    model.learn(2 * 2 * 5)
    assert model.round_stats["learning_rate"] == 0.5


def test_numpy_scalar_overrides_at_load_are_checked_and_converted(tmp_path):
    tiny().save(tmp_path / "model.zip")
    loaded = RennalaNIGT.load(tmp_path / "model.zip", learning_rate=np.float32(0.25), gamma=np.float64(0.5))
    assert type(loaded.learning_rate) is float and loaded.learning_rate == 0.25
    assert type(loaded.gamma) is float and loaded.gamma == 0.5
    with pytest.raises(ValueError, match=r"^eta\b"):
        RennalaNIGT.load(tmp_path / "model.zip", eta=np.float32(2.0))
    with pytest.warns(FutureWarning, match="^momentum is now called eta"), pytest.raises(ValueError, match=r"^momentum\b"):
        RennalaNIGT.load(tmp_path / "model.zip", momentum=np.float32(2.0))


def test_numpy_time_scale_and_worker_timeout_are_accepted():
    model = tiny(clock="real", backend="subprocess", time_scale=np.float32(0.0), worker_timeout=np.float64(10.0))
    assert type(model.time_scale) is float and type(model.worker_timeout) is float


# ---------------------------------------------------------------------------------- learning-rate schedule
class StateAtRoundStart(BaseCallback):
    """θ and d_t at each round start (AFedPG: each round of n server updates)."""

    def __init__(self) -> None:
        super().__init__()
        self.params: list[np.ndarray] = []
        self.buffers: list[Optional[np.ndarray]] = []

    def _on_rollout_start(self) -> None:
        self.params.append(self.model.get_flat_params())
        buffer = self.model.momentum_buffer
        self.buffers.append(None if buffer is None else buffer.copy())

    def _on_step(self) -> bool:
        return True


def bad_after(value: float, below: float):
    """A schedule: 1.0 while the remaining progress is >= ``below``, then ``value``."""

    def schedule(progress: float) -> float:
        return 1.0 if progress >= below else value

    return schedule


BAD_VALUES = [math.nan, math.inf, -math.inf, 0.0, -0.5]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_a_bad_schedule_value_at_the_first_update_stops_before_theta_changes(value):
    model = tiny(learning_rate=lambda progress: value)
    theta = model.get_flat_params()
    with pytest.raises(ValueError, match=rf"^learning_rate: .*{re_value(value)}.*progress_remaining=") as error:
        model.learn(10 * 2 * 5)
    assert "progress_remaining=" in str(error.value)
    assert np.array_equal(model.get_flat_params(), theta)
    assert model._n_updates == 0


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_a_bad_schedule_value_later_stops_before_the_update(value):
    model = tiny(learning_rate=bad_after(value, below=0.5))
    recorder = StateAtRoundStart()
    with pytest.raises(ValueError, match=r"^learning_rate: .*progress_remaining="):
        model.learn(20 * 2 * 5, callback=recorder)
    assert model._n_updates >= 3  # several good updates happened first
    # The failing round started at θ_t with d_{t-1}: the failed update changed neither.
    assert np.array_equal(model.get_flat_params(), recorder.params[-1])
    assert np.array_equal(model.momentum_buffer, recorder.buffers[-1])


@pytest.mark.parametrize("value", [math.nan, 0.0], ids=repr)
def test_a_bad_schedule_value_stops_afedpg_before_its_update(value):
    model = tiny(AFedPG, learning_rate=bad_after(value, below=0.5))
    after_update: list[tuple[np.ndarray, np.ndarray]] = []  # θ and d after each successful server update
    original = model._nigt_step

    def spy(*args, **kwargs):
        original(*args, **kwargs)
        after_update.append((model.get_flat_params(), model.momentum_buffer.copy()))

    model._nigt_step = spy
    with pytest.raises(ValueError, match=r"^learning_rate: .*progress_remaining="):
        model.learn(40 * 5)
    assert len(after_update) >= 3 and model._n_updates == len(after_update)
    theta, buffer = after_update[-1]
    assert np.array_equal(model.get_flat_params(), theta)
    assert np.array_equal(model.momentum_buffer, buffer)


def re_value(value: float) -> str:
    return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value).replace(".", r"\."))


@pytest.mark.parametrize("cls", [RennalaNIGT, AFedPG], ids=lambda c: c.__name__)
def test_a_linear_schedule_reaching_zero_at_the_end_is_accepted(cls):
    """rl-zoo3's ``lin_`` schedules give α = 0 at progress 0, the last update: it takes no step."""
    model = tiny(cls, learning_rate=lambda progress: 0.1 * progress)
    model.learn(6 * 2 * 5)
    assert model.round_stats["learning_rate"] == 0.0
    assert model._current_progress_remaining == 0.0
    assert np.array_equal(model.get_flat_params(), model.previous_params)  # α = 0: θ_{t+1} = θ_t


def test_a_schedule_returning_a_non_number_is_refused():
    model = tiny(learning_rate=lambda progress: None)
    theta = model.get_flat_params()
    with pytest.raises(ValueError, match=r"^learning_rate: .*progress_remaining="):
        model.learn(10 * 2 * 5)
    assert np.array_equal(model.get_flat_params(), theta)


# ------------------------------------------------------------------------------- another algorithm's file
@pytest.mark.parametrize(
    "saver, loader",
    [(RennalaNIGT, AFedPG), (AFedPG, RennalaNIGT), (MaleniaNIGT, SynchronizedNIGT), (SynchronizedNIGT, RennalaNIGT)],
    ids=lambda c: c.__name__,
)
def test_a_file_saved_by_another_algorithm_is_refused_naming_both(tmp_path, saver, loader):
    tiny(saver).save(tmp_path / "model.zip")
    with pytest.raises(ValueError, match=rf"^path: .*{saver.__name__}.*{loader.__name__}"):
        loader.load(tmp_path / "model.zip")
    with pytest.raises(ValueError, match=rf"^path: .*{saver.__name__}"):
        loader.load(tmp_path / "model.zip", env="Pendulum-v1")


@pytest.mark.parametrize("cls", ALGORITHMS, ids=lambda c: c.__name__)
def test_a_file_loads_with_its_own_class(tmp_path, cls):
    model = tiny(cls)
    model.save(tmp_path / "model.zip")
    loaded = cls.load(tmp_path / "model.zip", env="Pendulum-v1")
    assert type(loaded) is cls
    assert np.array_equal(loaded.get_flat_params(), model.get_flat_params())


def test_a_subclass_loads_its_base_class_file(tmp_path):
    class MyRennala(RennalaNIGT):
        pass

    tiny().save(tmp_path / "model.zip")
    loaded = MyRennala.load(tmp_path / "model.zip")
    assert type(loaded) is MyRennala
    assert loaded._algorithm_name == "test_a_subclass_loads_its_base_class_file.<locals>.MyRennala"


def test_a_file_saved_before_the_class_was_recorded_still_loads(tmp_path):
    model = tiny()
    del model._algorithm_name  # as a file written before this check existed
    model.save(tmp_path / "old.zip")
    loaded = RennalaNIGT.load(tmp_path / "old.zip")
    assert np.array_equal(loaded.get_flat_params(), model.get_flat_params())


def test_a_file_of_another_library_is_refused(tmp_path):
    PPO("MlpPolicy", "Pendulum-v1", n_steps=8, batch_size=8).save(tmp_path / "ppo.zip")
    with pytest.raises(ValueError, match=r"^path: .*not saved by RennalaNIGT.*ActorCriticPolicy"):
        RennalaNIGT.load(tmp_path / "ppo.zip")


# ----------------------------------------------------------------------------------------- budget warning
@pytest.mark.parametrize(
    "cls, kwargs, needed",
    [
        (RennalaNIGT, dict(round_size=50), 50),
        (RennalaNIGT, dict(round_size=2, initial_round_size=30), 30),
        (MaleniaNIGT, dict(round_size=1, n_agents=6), 6),  # every agent must contribute: at least n
        (MaleniaNIGT, dict(round_size=40, n_agents=2), 40),
        (SynchronizedNIGT, dict(n_agents=7), 7),  # one gradient per agent
    ],
    ids=["rennala-M", "rennala-M_init", "malenia-n", "malenia-S", "synchronized-n"],
)
def test_budget_warning_when_the_rounds_before_the_first_update_exceed_total_timesteps(cls, kwargs, needed):
    model = tiny(cls, **kwargs)
    with pytest.warns(UserWarning, match=rf"^total_timesteps: .*at least {needed} gradients.*at least one environment step"):
        model._warn_if_budget_too_small(needed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model._warn_if_budget_too_small(needed + 1)


def test_budget_warning_states_a_true_rule():
    """When the helper warns, learn indeed makes no update (the claim in the message)."""
    model = tiny(round_size=6)
    with pytest.warns(UserWarning, match="^total_timesteps"):
        model._warn_if_budget_too_small(6)
    model.learn(6)
    assert model._n_updates == 0 and model.momentum_buffer is not None


def test_no_budget_warning_for_afedpg_or_once_d_exists():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny(AFedPG, initial_round_size=1000)._warn_if_budget_too_small(5)
        model = tiny()
        model.learn(2 * 2 * 5)
        model._warn_if_budget_too_small(model.num_timesteps + 1)


# ----------------------------------------------------------------------------------------------- signatures
def test_afedpg_shows_every_parameter_explicitly_with_the_same_defaults():
    base = inspect.signature(NIGTAlgorithm.__init__).parameters
    own = inspect.signature(AFedPG.__init__).parameters
    kinds = {p.kind for p in own.values()}
    assert inspect.Parameter.VAR_POSITIONAL not in kinds and inspect.Parameter.VAR_KEYWORD not in kinds
    for name, parameter in base.items():
        assert name in own, name
        assert own[name].default == parameter.default, name
    assert own["momentum_schedule"].default is None


@pytest.mark.parametrize("cls", [NIGTAlgorithm, AFedPG], ids=lambda c: c.__name__)
def test_every_constructor_parameter_is_documented(cls):
    doc = inspect.getdoc(cls)
    for name in inspect.signature(cls.__init__).parameters:
        if name in ("self", "_init_setup_model"):
            continue
        assert f":param {name}:" in doc, f"{cls.__name__}: {name} is not documented"


def test_afedpg_passes_its_arguments_through():
    model = AFedPG("MlpPolicy", "Pendulum-v1", learning_rate=0.25, eta=0.3, horizon=5, gamma=0.5, n_agents=3,
                   compute_times="sqrt", seed=7, policy_kwargs=dict(net_arch=[4]), momentum_schedule=lambda s, k: 0.5)
    assert (model.learning_rate, model.eta, model.horizon, model.gamma, model.n_agents) == (0.25, 0.3, 5, 0.5, 3)
    assert model.seed == 7 and model.policy.net_arch == [4] and model.momentum_schedule(0, 0) == 0.5


def test_flatten_extractor_is_still_the_default():
    assert isinstance(tiny().policy.features_extractor, FlattenExtractor)
