"""Turning what a user passes as ``env`` into factories that build the environment inside each worker."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec
from stable_baselines3.common.vec_env import VecEnv


class EnvFactory:
    """A picklable callable that builds an environment with ``gymnasium.make`` from an env id or an ``EnvSpec``.

    :param env: a registered env id (str) or a ``gymnasium.envs.registration.EnvSpec``.
    :param env_kwargs: extra keyword arguments for ``gymnasium.make``.
    """

    def __init__(self, env: Union[str, EnvSpec], env_kwargs: Optional[dict[str, Any]] = None):
        if isinstance(env, EnvSpec):
            # Wrappers that gymnasium cannot re-create (e.g. SB3's Monitor) are dropped: workers need none.
            wrappers = tuple(w for w in env.additional_wrappers if w.kwargs is not None)
            env = dataclasses.replace(env, additional_wrappers=wrappers)
        self.env = env
        self.env_kwargs = dict(env_kwargs or {})

    def __call__(self) -> gym.Env:
        return gym.make(self.env, **self.env_kwargs)

    def __repr__(self) -> str:
        name = self.env if isinstance(self.env, str) else self.env.id
        return f"EnvFactory({name!r})"


def env_factories(env: Any) -> list[Callable[[], gym.Env]]:
    """Factories that rebuild ``env`` in a worker: one per sub-environment of a VecEnv, else one.

    :param env: an env id, a ``gymnasium.Env`` with a spec, a VecEnv whose sub-environments have specs, or a
        callable returning a ``gymnasium.Env``.
    :raises ValueError: if the environment cannot be rebuilt (no spec and no factory).
    """
    if isinstance(env, str):
        return [EnvFactory(env)]
    if isinstance(env, VecEnv):
        specs = env.get_attr("spec")
    elif isinstance(env, gym.Env):
        specs = [env.spec]
    elif callable(env):
        return [env]
    else:
        raise ValueError(f"env: expected an env id, a gymnasium.Env, a VecEnv or a callable, got {type(env).__name__}")
    if any(spec is None for spec in specs):
        raise ValueError(
            "env: this environment has no gymnasium spec, so workers cannot rebuild it; register it, "
            "or pass a callable that builds it (env=lambda: MyEnv())"
        )
    return [EnvFactory(spec) for spec in specs]
