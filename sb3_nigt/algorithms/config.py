"""The validated configuration of the NIGT algorithms: every scalar setting checked in one place, by the
constructor and by ``load(..., **kwargs)`` (SB3 writes those overrides into the model directly, as rl-zoo3's
``-i`` does), and the old names of renamed arguments.

Renamed (the old names still work, with a ``FutureWarning``): ``momentum`` → ``eta`` (η, the weight of the *new*
gradient in d_t = (1 − η) d_{t−1} + η g_t, where SB3 and ``torch.optim.SGD`` would call the other weight the
momentum), ``batch_size`` → ``round_size`` (M trajectories per aggregation round; S for Malenia) and
``initial_batch_size`` → ``initial_round_size`` (M_init).
"""

from __future__ import annotations

import difflib
import inspect
import math
import multiprocessing
import warnings
from typing import Any, Callable, Optional

import numpy as np

from sb3_nigt.algorithms.warn import user_stacklevel
from sb3_nigt.core.errors import UnknownArgumentError

CLOCKS = ("simulated", "real")

#: The defaults of the renamed arguments whose signature default is None (so that an old name given with its new
#: one is noticed): η and M.
DEFAULTS = {"eta": 0.1, "round_size": 20}
#: Old argument name → new name.
RENAMED = {"momentum": "eta", "batch_size": "round_size", "initial_batch_size": "initial_round_size"}
_MEANING = {
    "eta": "η, the weight of the new gradient g_t in d_t = (1 − η) d_{t−1} + η g_t",
    "round_size": "M, trajectories per aggregation round (S for MaleniaNIGT)",
    "initial_round_size": "M_init, trajectories of the initial round that forms d_{−1}",
}


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number: a Python or NumPy int or float, not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_int(value: Any, name: str, minimum: int, maximum: Optional[int] = None) -> int:
    """``value`` as a Python int, if it is an integer (Python or NumPy, not a bool) in [minimum, maximum].

    :raises ValueError: starting ``name:``, stating the accepted range.
    """
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        accepted = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: must be an integer {accepted}, got {value!r}")
    return int(value)


def _positive_int(value: Any, name: str) -> int:
    return check_int(value, name, 1)


def _optional_positive_int(value: Any, name: str) -> Optional[int]:
    return None if value is None else check_int(value, name, 1)


def _eta(value: Any, name: str) -> float:
    if not is_real(value) or not (0 < value <= 1):
        raise ValueError(f"{name}: η must be a float in (0, 1], got {value!r}")
    return float(value)


def _gamma(value: Any, name: str) -> float:
    if not is_real(value) or not (0 <= value <= 1):
        raise ValueError(f"{name}: γ must be a float in [0, 1], got {value!r}")
    return float(value)


def _learning_rate(value: Any, name: str) -> Any:
    if callable(value):
        return value  # a schedule: its values are checked at every update
    if not is_real(value) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: α must be a finite float > 0 or a schedule, got {value!r}")
    return float(value)


def _seed(value: Any, name: str) -> Optional[int]:
    return None if value is None else check_int(value, name, 0, 2**32 - 1)


def _clock(value: Any, name: str) -> str:
    if value not in CLOCKS:
        raise ValueError(f"{name}: must be one of {CLOCKS}, got {value!r}")
    return value


def _worker_timeout(value: Any, name: str) -> Optional[float]:
    if value is not None and not (is_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: must be None or a finite number of seconds > 0, got {value!r}")
    return None if value is None else float(value)


def _time_scale(value: Any, name: str) -> Optional[float]:
    if value is not None and not (is_real(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: must be None or a finite number >= 0, got {value!r}")
    return None if value is None else float(value)


def _start_method(value: Any, name: str) -> Optional[str]:
    methods = multiprocessing.get_all_start_methods()
    if value is not None and value not in methods:
        raise ValueError(f"{name}: must be None or one of this platform's start methods {methods}, got {value!r}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: must be True or False, got {value!r}")
    return bool(value)


#: The check of each scalar setting, by its (new) name: ``check(value, name the user gave) -> checked value``.
#: None means "the default" where the check allows it. NumPy scalars are accepted.
CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "learning_rate": _learning_rate,
    "eta": _eta,
    "round_size": _positive_int,
    "initial_round_size": _optional_positive_int,
    "horizon": _optional_positive_int,
    "gamma": _gamma,
    "n_agents": _optional_positive_int,
    "seed": _seed,
    "clock": _clock,
    "worker_timeout": _worker_timeout,
    "max_failures": lambda value, name: check_int(value, name, 0),
    "n_workers": _optional_positive_int,
    "time_scale": _time_scale,
    "start_method": _start_method,
    "stats_window_size": _positive_int,
    "verbose": lambda value, name: check_int(value, name, 0),
    "step_data": _flag,
}


def check_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Check the settings of ``values`` that :data:`CHECKS` knows (others are left to their owners).

    :param values: settings by the name the user gave, a new name or an old one of :data:`RENAMED`.
    :return: the checked values, by their new names, as Python ints, floats and bools (a schedule stays as is).
    :raises ValueError: starting with the name the user gave, stating the accepted range.
    """
    checked: dict[str, Any] = {}
    for name, value in values.items():
        new = RENAMED.get(name, name)
        if new in CHECKS:
            checked[new] = CHECKS[new](value, name)
    return checked


def warn_renamed(name: str, replaced: Any = None) -> None:
    """The ``FutureWarning`` for an argument given by its old name, at the user's line; ``replaced``: the value of
    the new name that the old one overrides (None: the new name was not given)."""
    new = RENAMED[name]
    also = "" if replaced is None else f"; it overrides {new}={replaced!r}, given too"
    warnings.warn(
        f"{name} is now called {new} ({_MEANING[new]}); {name}= still works but will be removed in a future "
        f"version{also}",
        FutureWarning,
        stacklevel=user_stacklevel(),
    )


def with_old_names(values: dict[str, Any], old_values: dict[str, Any]) -> dict[str, Any]:
    """``values`` where each old name given (not None) in ``old_values`` replaces its new name, with a
    ``FutureWarning``: the checks then name the argument as the user wrote it.

    An old name given with its new one wins (the warning says so): rl-zoo3 merges a command line's
    ``--hyperparams batch_size:4`` into a file's ``round_size: 20``, and the command line is meant.
    """
    values = dict(values)
    for name, value in old_values.items():
        if value is not None:
            warn_renamed(name, values.pop(RENAMED[name]))
            values[name] = value
    return values


def with_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` where η and M left at None (and not given by an old name) take their defaults, 0.1 and 20."""
    return {**values, **{name: default for name, default in DEFAULTS.items() if name in values and values[name] is None}}


def renamed_overrides(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``load``'s overrides, checked, under their new names (an old name warns, and wins, as in the constructor).

    :raises ValueError: as :func:`check_settings`.
    """
    kwargs = dict(kwargs)
    for name, new in RENAMED.items():
        if name in kwargs:
            warn_renamed(name, kwargs.pop(new, None))
    checked = check_settings(kwargs)
    return {**{key: value for key, value in kwargs.items() if key not in RENAMED}, **checked}


#: Other SB3 algorithms' arguments whose closest NIGT setting is not close in spelling: PPO's ``n_steps``
#: (steps per rollout; NIGT collects rounds of M trajectories of at most H steps) and ``n_envs``.
SB3_EQUIVALENTS = {"n_steps": ("round_size", "horizon"), "n_envs": ("n_agents",)}


def parameter_names(function: Callable) -> Optional[list[str]]:
    """The keyword parameters of ``function`` (``self`` and ``cls`` left out, names starting with ``_`` too); None
    when it takes ``**kwargs`` (any name is then valid)."""
    names = []
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind is not inspect.Parameter.VAR_POSITIONAL and name not in ("self", "cls") and not name.startswith("_"):
            names.append(name)
    return names


def check_keywords(owner: str, given: Any, valid: Optional[list[str]], where: str = "") -> None:
    """Refuse keyword arguments that are not in ``valid``, naming the closest valid ones.

    :param owner: the algorithm's name, for the message.
    :param given: the keyword names given.
    :param valid: the accepted names (:func:`parameter_names`); None accepts every name.
    :param where: what takes them, for the message (default: the constructor).
    :raises UnknownArgumentError: (a ``TypeError``) naming ``owner``, the first unknown name and the closest valid
        names (``difflib.get_close_matches``), or all valid names when none is close.
    """
    if valid is None:
        return
    unknown = [name for name in given if name not in valid and not name.startswith("_")]
    if not unknown:
        return
    name = unknown[0]
    close = [c for c in SB3_EQUIVALENTS.get(name, ()) if c in valid] or difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"valid arguments: {', '.join(sorted(valid))}"
    raise UnknownArgumentError(f"{owner}{where} got an unexpected keyword argument {name!r}; {hint}")
