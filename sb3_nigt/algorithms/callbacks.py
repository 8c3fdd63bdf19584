"""SB3 callbacks adapted to an algorithm whose ``on_step`` fires once per environment step.

SB3's :class:`~stable_baselines3.common.callbacks.ProgressBarCallback` adds ``training_env.num_envs`` at every
``on_step``, because PPO calls ``on_step`` once per ``VecEnv.step`` of ``num_envs`` environments. The NIGT
algorithms call ``on_step`` once per environment step of every used trajectory, whatever the number of
environments, so the bar must add 1. tqdm and rich, which the bar needs, are dependencies of sb3-nigt.
"""

from __future__ import annotations

import types

from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EventCallback, ProgressBarCallback


def _one_step(self: ProgressBarCallback) -> bool:
    self.pbar.update(1)
    return True


def count_environment_steps(callback: BaseCallback) -> None:
    """Make every SB3 ``ProgressBarCallback`` in ``callback`` (a list or an event callback's child included) add
    one per ``on_step``: the instance's ``_on_step`` is replaced, its class is left alone."""
    if isinstance(callback, CallbackList):
        for child in callback.callbacks:
            count_environment_steps(child)
    elif isinstance(callback, EventCallback) and callback.callback is not None:
        count_environment_steps(callback.callback)
    if isinstance(callback, ProgressBarCallback):
        callback._on_step = types.MethodType(_one_step, callback)  # type: ignore[method-assign]
