"""Turning what a user passes as ``env`` into factories that build each agent's environment inside a worker.

A user gives either one environment shared by every agent (homogeneous agents, paper Section 2), or one
environment per agent (heterogeneous agents, paper Section 5 and App. H.3):

- one environment: an env id, a ``gymnasium.Env`` with a spec, a callable that builds one, or a VecEnv with
  one sub-environment (or several copies of the same one);
- one per agent: a list of env ids, of ``(env id, env_kwargs)`` pairs, of callables, or a VecEnv whose
  sub-environment i is agent i's environment.

Workers never receive a live environment: they rebuild it from its id, its spec or its factory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

# Wrappers that gymnasium cannot re-create from a spec but that workers do not need (episode statistics).
_DROPPABLE_WRAPPERS = ("stable_baselines3.common.monitor:Monitor",)


class EnvFactory:
    """A picklable callable that builds an environment with ``gymnasium.make``, then applies ``wrappers``.

    :param env: a registered env id (str) or a ``gymnasium.envs.registration.EnvSpec``.
    :param env_kwargs: extra keyword arguments for ``gymnasium.make``.
    :param wrappers: ``(wrapper_class, wrapper_kwargs)`` pairs applied in order after ``gymnasium.make``.
    :raises ValueError: if an ``EnvSpec`` carries a wrapper that cannot be re-created (other than SB3's
        ``Monitor``, which is dropped).

    Two factories are equal when they build the same environment (same id or spec, kwargs and wrappers).
    """

    def __init__(
        self,
        env: Union[str, EnvSpec],
        env_kwargs: Optional[dict[str, Any]] = None,
        wrappers: Sequence[tuple[type, dict[str, Any]]] = (),
    ):
        if isinstance(env, EnvSpec):
            kept = []
            for wrapper in env.additional_wrappers:
                if wrapper.kwargs is not None:
                    kept.append(wrapper)
                elif wrapper.entry_point not in _DROPPABLE_WRAPPERS:
                    raise ValueError(
                        f"env: the wrapper {wrapper.name} of {env.id} cannot be re-created in a worker from the "
                        "environment's spec (it does not record its constructor arguments); give a callable that "
                        "builds the wrapped environment instead (env=[lambda: MyWrapper(gym.make(...)), ...])"
                    )
            env = dataclasses.replace(env, additional_wrappers=tuple(kept))
        self.env = env
        self.env_kwargs = dict(env_kwargs or {})
        self.wrappers = tuple((cls, dict(kwargs)) for cls, kwargs in wrappers)

    def __call__(self) -> gym.Env:
        env = gym.make(self.env, **self.env_kwargs)
        for cls, kwargs in self.wrappers:
            env = cls(env, **kwargs)
        return env

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, EnvFactory)
            and self.env == other.env
            and self.env_kwargs == other.env_kwargs
            and self.wrappers == other.wrappers
        )

    def __hash__(self) -> int:
        return hash(self.env if isinstance(self.env, str) else self.env.id)

    def __repr__(self) -> str:
        name = self.env if isinstance(self.env, str) else self.env.id
        parts = [repr(name)]
        if self.env_kwargs:
            parts.append(repr(self.env_kwargs))
        parts += [f"{cls.__name__}({kwargs})" for cls, kwargs in self.wrappers]
        return f"EnvFactory({', '.join(parts)})"


class AgentVecEnv(DummyVecEnv):
    """A DummyVecEnv whose sub-environment i is agent i's environment, built from per-agent factories.

    It keeps the factories (``agent_env_factories``) so that workers rebuild exactly these environments, even
    when they have no gymnasium spec.

    :param env_fns: one callable per agent that returns a ``gymnasium.Env``.
    """

    def __init__(self, env_fns: list[Callable[[], gym.Env]]):
        self.agent_env_factories = list(env_fns)
        super().__init__(self.agent_env_factories)


def _factory_of_item(item: Any, agent: int) -> Callable[[], gym.Env]:
    """The factory of one entry of a per-agent list."""
    if isinstance(item, str):
        return EnvFactory(item)
    if isinstance(item, EnvSpec):
        return EnvFactory(item)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (str, EnvSpec)) and isinstance(item[1], dict):
        return EnvFactory(item[0], item[1])
    if isinstance(item, gym.Env):
        if item.spec is None:
            raise ValueError(f"env[{agent}]: this environment has no gymnasium spec; give a callable that builds it")
        return EnvFactory(item.spec)
    if callable(item):
        return item
    raise ValueError(
        f"env[{agent}]: expected an env id, an (env id, env_kwargs) pair, a gymnasium.Env or a callable, "
        f"got {type(item).__name__}"
    )


def check_agent_spaces(observation_spaces: Sequence[gym.Space], action_spaces: Sequence[gym.Space]) -> None:
    """Every agent's environment must have agent 0's observation and action spaces.

    :param observation_spaces: agent i's observation space at index i.
    :param action_spaces: agent i's action space at index i.
    :raises ValueError: naming the first agent whose space differs from agent 0's.
    """
    for kind, found in (("observation", observation_spaces), ("action", action_spaces)):
        for agent in range(1, len(found)):
            if found[agent] != found[0]:
                raise ValueError(
                    f"env: agents 0 and {agent} have different {kind} spaces ({found[0]} vs {found[agent]}); "
                    "every agent's environment must have the same observation and action spaces"
                )


def env_factories(env: Any) -> list[Callable[[], gym.Env]]:
    """Factories that rebuild ``env`` in a worker: one per agent environment given (one per VecEnv sub-env).

    :param env: an env id, a ``gymnasium.Env`` with a spec, a VecEnv (an :class:`AgentVecEnv`, or one whose
        sub-environments have specs), a callable returning a ``gymnasium.Env``, or a list of per-agent entries.
    :raises ValueError: if an environment cannot be rebuilt (no spec and no factory).
    """
    if isinstance(env, str):
        return [EnvFactory(env)]
    if isinstance(env, (list, tuple)):
        return [_factory_of_item(item, agent) for agent, item in enumerate(env)]
    if isinstance(env, VecEnv):
        factories = getattr(env, "agent_env_factories", None)  # VecEnvWrapper forwards to the wrapped VecEnv
        if factories is not None:
            return list(factories)
        specs = env.get_attr("spec")
    elif isinstance(env, gym.Env):
        specs = [env.spec]
    elif callable(env):
        return [env]
    else:
        raise ValueError(
            f"env: expected an env id, a gymnasium.Env, a VecEnv, a callable or a list of per-agent environments, "
            f"got {type(env).__name__}"
        )
    if any(spec is None for spec in specs):
        raise ValueError(
            "env: this environment has no gymnasium spec, so workers cannot rebuild it; register it, "
            "or pass a callable that builds it (env=lambda: MyEnv())"
        )
    return [EnvFactory(spec) for spec in specs]


def resolve_env(env: Any) -> tuple[Any, Optional[list[Callable[[], gym.Env]]]]:
    """Split what a user passed as ``env`` into what SB3's ``BaseAlgorithm`` gets and the workers' factories.

    A list becomes an :class:`AgentVecEnv` (sub-env i = agent i's environment); a bare callable becomes a
    one-env AgentVecEnv; anything else is passed through. The agents' spaces are checked.

    :return: ``(env for BaseAlgorithm, factories)``; ``(None, None)`` for ``env=None``.
    :raises ValueError: if an environment cannot be rebuilt, or agents' spaces differ (naming the agents).
    """
    if env is None:
        return None, None
    factories = env_factories(env)
    if isinstance(env, (list, tuple)):
        if not factories:
            raise ValueError("env: the list of per-agent environments is empty")
        vec_env = AgentVecEnv(factories)
        try:
            check_agent_spaces([e.observation_space for e in vec_env.envs], [e.action_space for e in vec_env.envs])
        except ValueError:
            vec_env.close()
            raise
        return vec_env, factories
    if isinstance(env, VecEnv) and env.num_envs > 1:
        try:
            check_agent_spaces(env.get_attr("observation_space"), env.get_attr("action_space"))
        except ValueError:
            env.close()
            raise
    if callable(env) and not isinstance(env, (str, VecEnv)) and not hasattr(env, "step"):
        return AgentVecEnv(factories), factories  # keeps the factory, so set_env/load can rebuild it
    return env, factories


def is_heterogeneous(factories: Sequence[Callable[[], gym.Env]]) -> bool:
    """Whether the factories may build different environments (callables are compared by identity)."""
    return any(f != factories[0] for f in factories[1:])
