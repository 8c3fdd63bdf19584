"""The paper's heterogeneous-environment task (App. H.3) as reusable gymnasium wrappers.

In App. H.3 two agents train one policy on Humanoid-v4: agent 1 sees the standard observation with a 0
appended; agent 2 sees the observation multiplied by −1 with a 1 appended. The policy must serve both, so the
goal is J(θ) = (1/n) Σ_i J_i(θ), which MaleniaNIGT optimises without bias.

Agents are numbered from 0 in this library: the paper's agent 1 is agent 0 here, its agent 2 is agent 1.

Example::

    from sb3_nigt import MaleniaNIGT
    from sb3_nigt.envs import heterogeneous_envs

    envs = heterogeneous_envs("Hopper-v4", n_agents=2)     # [obs ++ [0], −obs ++ [1]]
    model = MaleniaNIGT("MlpPolicy", envs, compute_times=[1.0, 10.0], round_size=20, seed=0)
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_nigt.workers.env_factory import EnvFactory


class AgentTagObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Multiplies the observation by ``sign`` and appends the agent's tag: o' = [sign · o, tag].

    The observation space is the same for every ``sign`` and every ``tag`` in ``[0, n_tags − 1]`` (bounds
    ``[min(low, −high), max(high, −low)]`` for the observation and ``[0, n_tags − 1]`` for the tag), so all
    agents share one policy's spaces.

    :param env: a gymnasium environment with a 1-D ``Box`` observation space.
    :param tag: the value appended to every observation (App. H.3: 0 for agent 1, 1 for agent 2).
    :param sign: +1.0 or −1.0, the factor of the original observation (App. H.3: +1 for agent 1, −1 for agent 2).
    :param n_tags: the number of possible tags, which sets the tag's bounds ``[0, n_tags − 1]``.
    :raises ValueError: for a non-Box or multi-dimensional observation space, ``sign`` not ±1, or ``tag`` outside
        ``[0, n_tags − 1]``.

    The wrapper records its arguments, so an environment's ``spec`` re-creates it (workers rebuild it).
    """

    def __init__(self, env: gym.Env, tag: float = 0.0, sign: float = 1.0, n_tags: int = 2):
        gym.utils.RecordConstructorArgs.__init__(self, tag=tag, sign=sign, n_tags=n_tags)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"env: AgentTagObservation needs a 1-D Box observation space, got {space}")
        if sign not in (1.0, -1.0):
            raise ValueError(f"sign: must be +1.0 or −1.0, got {sign!r}")
        if n_tags < 1 or not (0 <= tag <= n_tags - 1):
            raise ValueError(f"tag: must be in [0, n_tags − 1] = [0, {n_tags - 1}], got {tag!r}")
        self.tag, self.sign = float(tag), float(sign)
        low = np.minimum(space.low, -space.high)
        high = np.maximum(space.high, -space.low)
        self.observation_space = spaces.Box(
            low=np.append(low, 0.0).astype(space.dtype),
            high=np.append(high, n_tags - 1).astype(space.dtype),
            dtype=space.dtype,
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.append(self.sign * np.asarray(observation), self.tag).astype(self.observation_space.dtype)


def heterogeneous_envs(env_id: str, n_agents: int = 2, env_kwargs: Optional[dict[str, Any]] = None) -> list[EnvFactory]:
    """One environment factory per agent for the App. H.3 task, for any env id with a 1-D Box observation.

    Agent i sees ``[(−1)^i · o, i]``: agent 0 the standard observation with 0 appended, agent 1 the negated
    observation with 1 appended (the paper's two agents), agent 2 the standard one with 2 appended, and so on.

    :param env_id: a registered gymnasium id, e.g. ``"Hopper-v4"`` or ``"Humanoid-v4"`` (the paper's).
    :param n_agents: n >= 1, the number of agents.
    :param env_kwargs: keyword arguments of ``gymnasium.make``, shared by all agents.
    :return: ``n_agents`` picklable factories, to pass as ``env`` to MaleniaNIGT (or any sb3-nigt algorithm).
    :raises ValueError: if ``n_agents`` < 1.
    """
    if isinstance(n_agents, bool) or not isinstance(n_agents, (int, np.integer)) or n_agents < 1:
        raise ValueError(f"n_agents: must be an integer >= 1, got {n_agents!r}")
    return [
        EnvFactory(env_id, env_kwargs, [(AgentTagObservation, dict(tag=float(i), sign=(-1.0) ** i, n_tags=int(n_agents)))])
        for i in range(n_agents)
    ]
