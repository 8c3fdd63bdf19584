"""The paper's Gaussian tanh-squashed policy as a Stable-Baselines3 ``BasePolicy``.

Source: Tyurin, Spiridonov, Rudenko, "Asynchronous Policy Gradient Aggregation for Efficient Distributed
Reinforcement Learning", ICLR 2026 (arXiv 2509.24305), App. H: Linear(ds,64) → Tanh → Linear(64,64) → Tanh →
{mean: Linear(64,da); std: Linear(64,da) → Softplus}.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Callable, Optional, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, create_mlp
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from sb3_nigt.algorithms.warn import user_stacklevel

#: ``net_arch`` keys of SB3's dict form that NIGT has no use for (it has no value or Q network).
_IGNORED_NET_ARCH_KEYS = ("vf", "qf")


def normalize_net_arch(net_arch: Union[None, list[int], tuple[int, ...], dict[str, Any]], stacklevel: Optional[int] = None) -> Optional[list[int]]:
    """``net_arch`` as a list of hidden layer sizes (None stays None: the default).

    SB3's dict form ``dict(pi=[...], vf=[...])`` is accepted: ``pi`` is used; ``vf`` and ``qf`` are ignored with a
    ``UserWarning`` (NIGT has no value or Q network).

    :param net_arch: None, a list (or tuple) of positive integers (``[]``: a linear policy), or a dict with a
        ``pi`` list and optionally ``vf``/``qf``.
    :param stacklevel: the warning's ``stacklevel``; None: the first frame outside sb3_nigt (the user's line).
    :return: the hidden layer sizes, a list of Python ints, or None.
    :raises ValueError: starting ``net_arch:``, for anything else (a size that is not an integer >= 1, a string,
        a dict without ``pi`` or with other keys).
    """
    if net_arch is None:
        return None
    if isinstance(net_arch, dict):
        unknown = sorted(map(str, set(net_arch) - {"pi", *_IGNORED_NET_ARCH_KEYS}))
        if "pi" not in net_arch or unknown:
            raise ValueError(
                "net_arch: the dict form needs a 'pi' list of hidden layer sizes (keys 'vf' and 'qf' are ignored, no "
                f"other key is accepted), got {net_arch!r}"
            )
        ignored = [key for key in _IGNORED_NET_ARCH_KEYS if key in net_arch]
        if ignored:
            warnings.warn(
                f"net_arch: NIGT has only a policy network; {' and '.join(map(repr, ignored))} of net_arch "
                f"{'is' if len(ignored) == 1 else 'are'} ignored, 'pi' = {net_arch['pi']!r} is used",
                UserWarning,
                stacklevel=stacklevel if stacklevel is not None else user_stacklevel(),
            )
        net_arch = net_arch["pi"]
        if isinstance(net_arch, dict):
            raise ValueError(f"net_arch: 'pi' must be a list of hidden layer sizes, got {net_arch!r}")
        return normalize_net_arch(net_arch)
    if not isinstance(net_arch, (list, tuple)) or any(
        isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) or size < 1 for size in net_arch
    ):
        raise ValueError(
            "net_arch: must be a list of hidden layer sizes, each an integer >= 1 ([] for a linear policy), or SB3's "
            f"dict(pi=[...]), got {net_arch!r}"
        )
    return [int(size) for size in net_arch]


def check_activation_fn(activation_fn: Any) -> type[nn.Module]:
    """``activation_fn`` must be a ``torch.nn.Module`` class that builds without arguments (``nn.Tanh``).

    :raises ValueError: starting ``activation_fn:``, for a name, an instance or another class.
    """
    if not (isinstance(activation_fn, type) and issubclass(activation_fn, nn.Module)):
        raise ValueError(
            "activation_fn: must be a torch.nn.Module subclass that builds without arguments, such as torch.nn.Tanh "
            f"or torch.nn.ReLU (the class itself, not a name or an instance), got {activation_fn!r}"
        )
    try:
        activation_fn()
    except Exception as exc:  # noqa: BLE001 - any failure means the class cannot be used as an activation
        raise ValueError(
            f"activation_fn: {activation_fn.__name__}() must build without arguments (create_mlp calls it so), "
            f"got {type(exc).__name__}: {exc}"
        ) from None
    return activation_fn


def check_min_std(min_std: Any) -> float:
    """``min_std`` must be a finite number > 0.

    :raises ValueError: starting ``min_std:``.
    """
    if (
        isinstance(min_std, (bool, np.bool_))
        or not isinstance(min_std, (int, float, np.integer, np.floating))
        or not (math.isfinite(min_std) and min_std > 0)
    ):
        raise ValueError(f"min_std: must be a finite float > 0, got {min_std!r}")
    return float(min_std)


def check_observation_space(observation_space: Any) -> None:
    """A flat ``spaces.Box``: at most one dimension, not an image.

    Workers sample actions with a NumPy forward on the flattened raw observation, while the gradient and
    ``predict`` go through SB3's preprocessing, which divides image observations by 255: an image (or any
    multi-dimensional) observation would be sampled and scored on different inputs, so it is refused.

    :raises ValueError: starting ``observation_space:``, for a non-Box space (Dict, Tuple, Discrete, ...), an image
        space (SB3's ``is_image_space``) or a Box of more than one dimension.
    """
    if not isinstance(observation_space, spaces.Box):
        raise ValueError(
            "observation_space: NIGT needs a flat gymnasium.spaces.Box observation space (Dict, Tuple and discrete "
            f"spaces are not supported; flatten them with gymnasium.wrappers.FlattenObservation), got {observation_space}"
        )
    if is_image_space(observation_space) or len(observation_space.shape) > 1:
        kind = "an image space" if is_image_space(observation_space) else f"a Box of {len(observation_space.shape)} dimensions"
        raise ValueError(
            f"observation_space: {kind} {observation_space} is not supported: NIGT needs a flat Box (shape (ds,)), "
            "because workers sample with a NumPy forward on the raw flattened observation while the gradient and "
            "predict use SB3's preprocessing (images divided by 255); flatten the observation "
            "(gymnasium.wrappers.FlattenObservation, and scale images yourself)"
        )


def check_action_space(action_space: Any) -> None:
    """A ``spaces.Box`` with finite bounds (the tanh squash maps onto them).

    :raises ValueError: starting ``action_space:``.
    """
    if not isinstance(action_space, spaces.Box):
        raise ValueError(
            f"action_space: NIGT needs a continuous gymnasium.spaces.Box action space, got {action_space} "
            "(a discrete action space is not supported)"
        )
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(
            "action_space: every bound of the action Box must be finite (no inf or NaN): the tanh-squashed action is "
            f"mapped onto [low, high], got low={action_space.low.tolist()}, high={action_space.high.tolist()}"
        )


def running_statistics_modules(module: nn.Module) -> list[str]:
    """Names of the sub-modules whose output depends on the batch or on running statistics (BatchNorm of any kind,
    and other normalization layers that track running statistics), empty when there is none."""
    found = []
    for name, sub in module.named_modules():
        if isinstance(sub, _BatchNorm) or (isinstance(sub, _NormBase) and sub.track_running_stats):
            found.append(f"{name or '(the policy)'} ({type(sub).__name__})")
    return found


def check_policy_kwargs(policy_class: type[BasePolicy], policy_kwargs: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Check an algorithm's ``policy_kwargs`` before anything is built, and return a normalized copy (``net_arch``
    as a list: SB3's dict form keeps ``pi``, with a warning for ``vf``/``qf``).

    :param policy_class: the policy class the keyword arguments are for.
    :param policy_kwargs: None or a dict.
    :raises ValueError: starting ``policy_kwargs:`` for a non-dict or a key the policy class does not accept, or
        starting with the key (``net_arch:``, ``activation_fn:``, ``min_std:``, ``features_extractor_class:``,
        ``features_extractor_kwargs:``) for a bad value.
    """
    if policy_kwargs is None:
        return {}
    if not isinstance(policy_kwargs, dict):
        raise ValueError(f"policy_kwargs: must be None or a dict of the policy's keyword arguments, got {policy_kwargs!r}")
    kwargs = dict(policy_kwargs)
    parameters = inspect.signature(policy_class.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        accepted = [name for name in parameters if name not in ("self", "observation_space", "action_space", "lr_schedule")]
        unknown = sorted(map(str, set(kwargs) - set(accepted)))
        if unknown:
            raise ValueError(
                f"policy_kwargs: {policy_class.__name__} does not accept {', '.join(map(repr, unknown))}; "
                f"accepted keys are {', '.join(accepted)}"
            )
    if "net_arch" in kwargs:
        kwargs["net_arch"] = normalize_net_arch(kwargs["net_arch"])  # the warning names the user's line
    if "activation_fn" in kwargs:
        check_activation_fn(kwargs["activation_fn"])
    if "min_std" in kwargs:
        kwargs["min_std"] = check_min_std(kwargs["min_std"])
    extractor = kwargs.get("features_extractor_class")
    if extractor is not None and not (isinstance(extractor, type) and issubclass(extractor, BaseFeaturesExtractor)):
        raise ValueError(
            f"features_extractor_class: must be a subclass of SB3's BaseFeaturesExtractor, got {extractor!r}"
        )
    extractor_kwargs = kwargs.get("features_extractor_kwargs")
    if extractor_kwargs is not None and not isinstance(extractor_kwargs, dict):
        raise ValueError(f"features_extractor_kwargs: must be None or a dict, got {extractor_kwargs!r}")
    return kwargs


class NIGTPolicy(BasePolicy):
    """Gaussian policy with a tanh squash onto the Box bounds (paper, App. H).

    The network maps an observation ``s`` (float32, shape ``(batch, ds)``) to a mean μθ(s) and a standard
    deviation σθ(s) = softplus(·) + ``min_std`` (both float32, shape ``(batch, da)``). Sampling draws
    u ~ N(μ, diag σ²); the environment action is tanh(u) mapped onto the Box bounds with SB3's
    ``unscale_action``. Because tanh is a bijection, ∇θ log π(a|s) = ∇θ log N(u; μθ(s), σθ(s)), so
    log-probabilities are always computed on the pre-squash sample ``u``, never on atanh(a).

    :param observation_space: a flat ``spaces.Box`` observation space (one dimension, not an image).
    :param action_space: a ``spaces.Box`` action space with finite bounds.
    :param lr_schedule: unused (NIGT's update is not an optimizer step); kept for SB3's policy signature.
    :param net_arch: hidden layer sizes (integers >= 1), default ``[64, 64]`` (the paper's network); SB3's dict
        form ``dict(pi=[...], vf=[...])`` is accepted: ``pi`` is used, ``vf``/``qf`` are ignored with a warning.
    :param activation_fn: activation after each hidden layer, a ``torch.nn.Module`` class, default ``nn.Tanh``.
    :param min_std: the small minimum added to the softplus standard deviation (finite, > 0).
    :param features_extractor_class: SB3 features extractor, default ``FlattenExtractor``.
    :param features_extractor_kwargs: keyword arguments for the features extractor.
    :param normalize_images: passed to SB3's ``BaseModel``.
    :raises ValueError: naming the argument: an observation space that is not a flat Box (images, several
        dimensions, Dict, Tuple), an action space that is not a Box with finite bounds, a bad ``net_arch`` (sizes
        not integers >= 1, a dict without ``pi``), an ``activation_fn`` that is not an ``nn.Module`` class, or
        ``min_std`` not finite and > 0.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Optional[Schedule] = None,
        net_arch: Union[None, list[int], dict[str, list[int]]] = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        min_std: float = 1e-3,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: Optional[dict[str, Any]] = None,
        normalize_images: bool = True,
    ):
        check_observation_space(observation_space)
        check_action_space(action_space)
        net_arch = normalize_net_arch(net_arch)
        check_activation_fn(activation_fn)
        min_std = check_min_std(min_std)
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            normalize_images=normalize_images,
            squash_output=True,
        )
        self.net_arch = [64, 64] if net_arch is None else net_arch
        self.activation_fn = activation_fn
        self.min_std = float(min_std)
        self.features_extractor = self.make_features_extractor()
        assert isinstance(action_space, spaces.Box)  # check_action_space refuses any other space
        action_dim = int(np.prod(action_space.shape))
        self.latent = nn.Sequential(*create_mlp(self.features_extractor.features_dim, -1, self.net_arch, activation_fn))
        last = self.net_arch[-1] if self.net_arch else self.features_extractor.features_dim
        self.mean_head = nn.Linear(last, action_dim)
        self.std_head = nn.Linear(last, action_dim)
        self.softplus = nn.Softplus()

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            net_arch=self.net_arch,
            activation_fn=self.activation_fn,
            min_std=self.min_std,
            features_extractor_class=self.features_extractor_class,
            features_extractor_kwargs=self.features_extractor_kwargs,
            normalize_images=self.normalize_images,
        )
        return data

    def distribution_params(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """Mean μθ(s) and standard deviation σθ(s), float32 tensors of shape ``(batch, da)``."""
        latent = self.latent(self.extract_features(obs, self.features_extractor))
        return self.mean_head(latent), self.softplus(self.std_head(latent)) + self.min_std

    def get_distribution(self, obs: PyTorchObs) -> th.distributions.Normal:
        """The pre-squash Gaussian N(μθ(s), diag σθ(s)²) as a ``torch.distributions.Normal``."""
        mean, std = self.distribution_params(obs)
        return th.distributions.Normal(mean, std, validate_args=False)

    def log_prob(self, obs: PyTorchObs, pre_squash_actions: th.Tensor) -> th.Tensor:
        """log N(u; μθ(s), σθ(s)) summed over action dimensions, shape ``(batch,)``; ``u`` is pre-tanh."""
        return self.get_distribution(obs).log_prob(pre_squash_actions).sum(dim=-1)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self._predict(obs, deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        # Returns tanh(u) in [-1, 1]; BasePolicy.predict maps it onto the Box bounds (squash_output=True).
        mean, std = self.distribution_params(observation)
        u = mean if deterministic else mean + std * th.randn_like(mean)
        return th.tanh(u)

    def numpy_forward(self) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """A NumPy copy of the network for fast rollouts in a worker, one call per lockstep step.

        Returns a function mapping a batch of flat float32 observations ``(B, ds)`` to ``(mean, std)``, each
        float32 ``(B, da)``. Only used to *sample* ``u``; the gradient is always computed by torch on the recorded
        ``u``. Falls back to a torch forward when a layer has no NumPy equivalent.
        """
        activations: dict[type, Callable[[np.ndarray], np.ndarray]] = {nn.Tanh: np.tanh, nn.ReLU: lambda x: np.maximum(x, 0.0), nn.Identity: lambda x: x}
        layers: list[tuple[np.ndarray, np.ndarray, Callable]] = []
        supported = isinstance(self.features_extractor, FlattenExtractor)
        modules = list(self.latent)
        i = 0
        while supported and i < len(modules):
            lin = modules[i]
            act = modules[i + 1] if i + 1 < len(modules) else None
            if not isinstance(lin, nn.Linear) or type(act) not in activations:
                supported = False
                break
            layers.append((lin.weight.detach().cpu().numpy().T.copy(), lin.bias.detach().cpu().numpy().copy(), activations[type(act)]))
            i += 2
        if not supported:

            def torch_forward(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                with th.no_grad():
                    mean, std = self.distribution_params(th.as_tensor(obs, dtype=th.float32))
                return mean.numpy(), std.numpy()

            return torch_forward
        head_w = th.cat([self.mean_head.weight, self.std_head.weight]).detach().cpu().numpy().T.copy()
        head_b = th.cat([self.mean_head.bias, self.std_head.bias]).detach().cpu().numpy().copy()
        action_dim = self.mean_head.out_features
        min_std = np.float32(self.min_std)

        def forward(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x = obs
            for weight, bias, act in layers:
                x = act(x @ weight + bias)
            out = x @ head_w + head_b
            return out[:, :action_dim], np.logaddexp(out[:, action_dim:], np.float32(0.0)) + min_std

        return forward


MlpPolicy = NIGTPolicy
