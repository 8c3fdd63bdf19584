"""The paper's Gaussian tanh-squashed policy as a Stable-Baselines3 ``BasePolicy``.

Source: Tyurin, Spiridonov, Rudenko, "Asynchronous Policy Gradient Aggregation for Efficient Distributed
Reinforcement Learning", ICLR 2026 (arXiv 2509.24305), App. H: Linear(ds,64) → Tanh → Linear(64,64) → Tanh →
{mean: Linear(64,da); std: Linear(64,da) → Softplus}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, create_mlp
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn


class NIGTPolicy(BasePolicy):
    """Gaussian policy with a tanh squash onto the Box bounds (paper, App. H).

    The network maps an observation ``s`` (float32, shape ``(batch, ds)``) to a mean μθ(s) and a standard
    deviation σθ(s) = softplus(·) + ``min_std`` (both float32, shape ``(batch, da)``). Sampling draws
    u ~ N(μ, diag σ²); the environment action is tanh(u) mapped onto the Box bounds with SB3's
    ``unscale_action``. Because tanh is a bijection, ∇θ log π(a|s) = ∇θ log N(u; μθ(s), σθ(s)), so
    log-probabilities are always computed on the pre-squash sample ``u``, never on atanh(a).

    :param observation_space: a ``spaces.Box`` observation space.
    :param action_space: a ``spaces.Box`` action space with finite bounds.
    :param lr_schedule: unused (NIGT's update is not an optimizer step); kept for SB3's policy signature.
    :param net_arch: hidden layer sizes, default ``[64, 64]`` (the paper's network).
    :param activation_fn: activation after each hidden layer, default ``nn.Tanh``.
    :param min_std: the small minimum added to the softplus standard deviation.
    :param features_extractor_class: SB3 features extractor, default ``FlattenExtractor``.
    :param features_extractor_kwargs: keyword arguments for the features extractor.
    :param normalize_images: passed to SB3's ``BaseModel``.
    :raises ValueError: if an action space is not a ``spaces.Box`` or ``min_std`` is not positive.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Optional[Schedule] = None,
        net_arch: Optional[list[int]] = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        min_std: float = 1e-3,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: Optional[dict[str, Any]] = None,
        normalize_images: bool = True,
    ):
        if not isinstance(action_space, spaces.Box):
            raise ValueError(f"action_space: NIGTPolicy needs a continuous gymnasium.spaces.Box, got {action_space}")
        if not min_std > 0:
            raise ValueError(f"min_std: must be > 0, got {min_std}")
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            normalize_images=normalize_images,
            squash_output=True,
        )
        self.net_arch = [64, 64] if net_arch is None else list(net_arch)
        self.activation_fn = activation_fn
        self.min_std = float(min_std)
        self.features_extractor = self.make_features_extractor()
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
        """A per-step NumPy copy of the network for fast rollouts in a worker.

        Returns a function mapping one flat float32 observation ``(ds,)`` to ``(mean, std)``, each ``(da,)``.
        Only used to *sample* ``u``; the gradient is always computed by torch on the recorded ``u``. Falls back to
        a torch forward when a layer has no NumPy equivalent.
        """
        activations = {nn.Tanh: np.tanh, nn.ReLU: lambda x: np.maximum(x, 0.0), nn.Identity: lambda x: x}
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
                    mean, std = self.distribution_params(th.as_tensor(obs, dtype=th.float32).unsqueeze(0))
                return mean[0].numpy(), std[0].numpy()

            return torch_forward
        head_w = th.cat([self.mean_head.weight, self.std_head.weight]).detach().cpu().numpy().T.copy()
        head_b = th.cat([self.mean_head.bias, self.std_head.bias]).detach().cpu().numpy().copy()
        action_dim = self.mean_head.out_features
        min_std = np.float32(self.min_std)

        def forward(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x = obs.reshape(-1)
            for weight, bias, act in layers:
                x = act(x @ weight + bias)
            out = x @ head_w + head_b
            return out[:action_dim], np.logaddexp(out[action_dim:], 0.0) + min_std

        return forward


MlpPolicy = NIGTPolicy
