"""Turning what a user passes as ``env`` into factories that build each agent's environment inside a worker.

A user gives either one environment shared by every agent (homogeneous agents, paper Section 2), or one
environment per agent (heterogeneous agents, paper Section 5 and App. H.3):

- one environment: an env id, a ``gymnasium.Env`` instance, a callable or a class that builds one, or a VecEnv
  with one sub-environment (or several copies of the same one);
- one per agent: a list of env ids, of ``(env id, env_kwargs)`` pairs, of callables, of instances, or a VecEnv
  whose sub-environment i is agent i's environment.

Workers never receive a live environment: they rebuild it from its registered id or spec, from its factory,
or, for an instance that no registered spec describes (as SB3's algorithms accept), from a copy taken when it
was given (:class:`EnvSnapshot`: each call unpickles a fresh copy). A ``SubprocVecEnv`` keeps no factories
and its environments live in its own processes, so its sub-environments must have registered specs; its
processes are not used by the workers (a ``UserWarning`` says so).

Environments built in a worker process do not repeat gymnasium's "<id> is out of date" DeprecationWarning:
the main process shows it (once), workers would show it again at every ``learn``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import sys
import warnings
from types import FrameType
from typing import Any, Callable, Optional, Sequence, Union

import cloudpickle
import gymnasium as gym
from gymnasium.envs.registration import EnvSpec
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

# Wrappers that gymnasium cannot re-create from a spec but that workers do not need (episode statistics).
_DROPPABLE_WRAPPERS = ("stable_baselines3.common.monitor:Monitor",)

# gymnasium's warning for an id with a newer version (e.g. Hopper-v4); ``warnings`` matches it from the start.
_OUT_OF_DATE = r".*The environment \S+ is out of date\."


def build_env(factory: Callable[[], gym.Env]) -> gym.Env:
    """``factory()``; in a worker process, without gymnasium's "<id> is out of date" DeprecationWarning.

    The main process builds the same environment and shows that warning (gymnasium shows it once per process);
    every worker process would repeat it at every ``learn``. Only that message is filtered, only in processes
    started by ``multiprocessing``, only while the environment is built.
    """
    if multiprocessing.parent_process() is None:
        return factory()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_OUT_OF_DATE, category=DeprecationWarning)
        return factory()


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
        return build_env(self._make)

    def _make(self) -> gym.Env:
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


class EnvSnapshot:
    """A picklable factory that returns a fresh copy of an environment as it was when the snapshot was taken.

    It holds the environment pickled with cloudpickle (classes defined in ``__main__`` or in a function travel
    by value); each call unpickles a new copy, so every worker gets an environment of its own.

    :param env: the environment to copy.
    :param argument: the argument named in the error, ``"env"`` or ``"env[i]"``.
    :param reason: why the environment is copied instead of rebuilt from a spec (for the error).
    :raises ValueError: if cloudpickle cannot pickle it (it holds a lock, an open file or socket, ...).

    Two snapshots are equal when their pickled bytes are (so copies of one fresh environment are one environment).
    """

    def __init__(self, env: gym.Env, argument: str = "env", reason: str = "it has no gymnasium spec"):
        self.name = _describe(env)
        try:
            self.data = cloudpickle.dumps(env)
        except Exception as exc:  # pickling raises TypeError, PicklingError, AttributeError, RecursionError, ...
            raise ValueError(
                f"{argument}: workers cannot rebuild {self.name}: {reason}, and it cannot be copied to them "
                f"(cloudpickle failed: {type(exc).__name__}: {exc}). Pass what builds it instead: its class "
                f"(env={type(env.unwrapped).__name__}), a factory (env=lambda: make_my_env()), or a registered "
                "env id (gymnasium.register(...), then env='MyEnv-v0')"
            ) from exc

    def __call__(self) -> gym.Env:
        return build_env(self._make)

    def _make(self) -> gym.Env:
        return cloudpickle.loads(self.data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnvSnapshot) and self.data == other.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"EnvSnapshot({self.name})"


def _describe(env: Any) -> str:
    """The environment as ``str`` shows it with its wrappers (``<TimeLimit<MyEnv>>``), or its type's name if long."""
    text = str(env)
    return text if len(text) <= 80 else type(env).__name__


def _rebuildable(spec: Optional[EnvSpec]) -> bool:
    """Whether a worker can rebuild an environment from ``spec``: an id registered in gymnasium, whose entry
    point is not in ``__main__`` (a worker's ``__main__`` is not the user's script)."""
    if spec is None or spec.id not in gym.registry:
        return False
    return not (isinstance(spec.entry_point, str) and spec.entry_point.startswith("__main__:"))


def _instance_factory(env: gym.Env, argument: str) -> Callable[[], gym.Env]:
    """The factory of an environment instance: its spec when a worker can rebuild from it, otherwise a copy.

    SB3's ``Monitor`` wrappers around it are not copied (workers do not need episode statistics, and a Monitor
    writing to a file cannot be copied).
    """
    spec = env.spec
    if spec is not None and _rebuildable(spec):
        return EnvFactory(spec)
    reason = "it has no gymnasium spec" if spec is None else f"its spec's id {spec.id!r} is not registered in gymnasium"
    while isinstance(env, Monitor):
        env = env.env
    return EnvSnapshot(env, argument, reason)


def _user_stacklevel() -> int:
    """The ``stacklevel`` of a warning raised by this function's caller that points at the user's code: the first
    frame outside sb3_nigt and stable_baselines3."""
    frame: Optional[FrameType] = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("sb3_nigt.", "stable_baselines3.")):
        frame, level = frame.f_back, level + 1
    return level


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
        return _instance_factory(item, f"env[{agent}]")
    if isinstance(item, type) and issubclass(item, VecEnv):
        raise ValueError(f"env[{agent}]: a VecEnv class cannot be one agent's environment; give a gymnasium.Env factory")
    if callable(item):
        return item
    raise ValueError(
        f"env[{agent}]: expected an env id, an (env id, env_kwargs) pair, a gymnasium.Env, a class or a callable "
        f"that builds one, got {type(item).__name__}"
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

    :param env: an env id, a ``gymnasium.Env`` (rebuilt from its registered spec, else copied: see
        :class:`EnvSnapshot`), a VecEnv (an :class:`AgentVecEnv`, a DummyVecEnv, or one whose sub-environments
        have registered specs), a class or callable returning a ``gymnasium.Env``, or a list of per-agent entries.
    :raises ValueError: if an environment can be neither rebuilt nor copied.
    :warns UserWarning: for a ``SubprocVecEnv``, whose processes the workers do not use.
    """
    if isinstance(env, str):
        return [EnvFactory(env)]
    if isinstance(env, (list, tuple)):
        return [_factory_of_item(item, agent) for agent, item in enumerate(env)]
    if isinstance(env, VecEnv):
        return _vec_env_factories(env)
    if isinstance(env, gym.Env):
        return [_instance_factory(env, "env")]
    if isinstance(env, type) and issubclass(env, VecEnv):
        raise ValueError(f"env: got the class {env.__name__}; pass a VecEnv instance, or the environments' factories")
    if callable(env):
        return [env]
    raise ValueError(
        f"env: expected an env id, a gymnasium.Env, a VecEnv, a class or callable that builds a gymnasium.Env, "
        f"or a list of per-agent environments, got {type(env).__name__}"
    )


def _vec_env_factories(env: VecEnv) -> list[Callable[[], gym.Env]]:
    """The factories of a VecEnv's sub-environments (see :func:`env_factories`)."""
    factories = getattr(env, "agent_env_factories", None)  # VecEnvWrapper forwards to the wrapped VecEnv
    if factories is not None:
        return list(factories)
    base = env.unwrapped
    if isinstance(base, DummyVecEnv):  # the sub-environments are here: rebuild from their specs or copy them
        return [_instance_factory(sub, f"env: sub-environment {i} of the DummyVecEnv") for i, sub in enumerate(base.envs)]
    specs = env.get_attr("spec")
    missing = [i for i, spec in enumerate(specs) if not _rebuildable(spec)]
    if isinstance(base, SubprocVecEnv):
        if missing:
            raise ValueError(
                f"env: sub-environment {missing[0]} of this SubprocVecEnv has no registered gymnasium spec, and a "
                "SubprocVecEnv keeps neither the functions that built its environments nor the environments (they live "
                "in its processes), so workers cannot rebuild it; pass those functions instead (env=[make_env_0, ...] "
                "or env=MyEnv, one per agent or one shared), and backend='subprocess' to run the workers in parallel"
            )
        warnings.warn(
            "env is a SubprocVecEnv: the workers that sample trajectories and compute gradients do not use its "
            "processes; they rebuild its environments from their specs. Use backend='subprocess' (with n_workers) "
            "to run them in parallel processes; a DummyVecEnv, an env id or a factory avoids the idle processes.",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )
    elif missing:
        raise ValueError(
            f"env: sub-environment {missing[0]} of this {type(base).__name__} has no registered gymnasium spec, so "
            "workers cannot rebuild it; register it, or pass the functions that build the environments "
            "(env=[make_env_0, ...], env=MyEnv or env=DummyVecEnv([...]))"
        )
    return [EnvFactory(spec) for spec in specs]


def resolve_env(env: Any) -> tuple[Union[gym.Env, VecEnv, str, None], Optional[list[Callable[[], gym.Env]]]]:
    """Split what a user passed as ``env`` into what SB3's ``BaseAlgorithm`` gets and the workers' factories.

    A list becomes an :class:`AgentVecEnv` (sub-env i = agent i's environment); a bare callable becomes a
    one-env AgentVecEnv; anything else is passed through. The agents' spaces are checked.

    :return: ``(env for BaseAlgorithm, factories)``; ``(None, None)`` for ``env=None``.
    :raises ValueError: if an environment cannot be rebuilt, or agents' spaces differ (naming the agents).
    """
    if env is None:
        return None, None
    try:
        factories = env_factories(env)
    except ValueError:
        if isinstance(env, VecEnv):
            env.close()
        raise
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
    if callable(env) and not isinstance(env, (str, VecEnv)) and (isinstance(env, type) or not hasattr(env, "step")):
        return AgentVecEnv(factories), factories  # a factory or a class: keeps it, so set_env/load can rebuild it
    return env, factories


def is_heterogeneous(factories: Sequence[Callable[[], gym.Env]]) -> bool:
    """Whether the factories may build different environments (callables are compared by identity)."""
    return any(f != factories[0] for f in factories[1:])
