"""Priors p(z). Each is a module whose call returns a `torch.distributions.Distribution` over z
(batch_shape (), event_shape (D,)), registered by name with registry.register_prior.

A call (rather than a fixed object) lets learnable priors rebuild their graph every step, and
lets the VampPrior encode its pseudo-inputs with the current encoder.

- `normal`: N(0, I).
- `mog`: a learnable mixture of M diagonal Gaussians (locs, log-scales and logits are parameters).
- `vamp`: the VampPrior (Tomczak & Welling, 2018), p(z) = 1/M sum_m q(z|u_m) for M learnable
  pseudo-inputs u_m. Our posterior is itself a K-component mixture, so the prior is exactly a
  mixture of M*K Gaussians with weights w_k(u_m) / M, and `MixtureOfGaussians` serves as is.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
from torch.distributions import Distribution, constraints

from vaekit.config import ModelConfig
from vaekit.config.registry import prior as prior_spec
from vaekit.config.registry import register_prior
from vaekit.distributions.kl import register_closed_form_kl
from vaekit.distributions.mixture import MixtureOfGaussians, diagonal_normal_kl_to_standard, standard_normal_log_prob


class StandardNormalDistribution(Distribution):
    """N(0, I) in D dimensions: batch_shape (), event_shape (D,)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        latent_size: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        validate_args: bool | None = None,
    ) -> None:
        self.latent_size, self.device, self.dtype = latent_size, device, dtype
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([latent_size]), validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        """Zeros (D,)."""
        return torch.zeros(self.event_shape, device=self.device, dtype=self.dtype)

    @property
    def variance(self) -> torch.Tensor:
        """Ones (D,)."""
        return torch.ones(self.event_shape, device=self.device, dtype=self.dtype)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) summed over the D dimensions: (*batch) for z (*batch, D)."""
        if self._validate_args:
            self._validate_sample(z)
        return standard_normal_log_prob(z)

    def rsample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """Standard normal draws (*sample_shape, D) on this distribution's device and dtype."""
        return torch.randn(self._extended_shape(sample_shape), device=self.device, dtype=self.dtype)


@register_closed_form_kl(MixtureOfGaussians, StandardNormalDistribution)
def _one_gaussian_to_standard_normal(q: MixtureOfGaussians, p: StandardNormalDistribution) -> torch.Tensor | None:
    """KL(q || N(0, I)) per dimension (*batch, D) when q is one Gaussian (K = 1)."""
    if q.components != 1:
        return None
    return diagonal_normal_kl_to_standard(q.loc[..., 0, :], q.scale[..., 0, :])


@register_prior("normal", help="N(0, I)")
class StandardNormalPrior(nn.Module):
    """The "normal" prior: its call is N(0, I) over the latent space, on the module's device."""

    _anchor: torch.Tensor  # a buffer

    def __init__(self, latent_size: int) -> None:
        super().__init__()
        self.latent_size = latent_size
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # follows .to(device)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "StandardNormalPrior":
        """The prior for `config`'s latent size."""
        return cls(config.latent_size)

    def forward(self, encode: Callable | None = None) -> StandardNormalDistribution:
        """The `StandardNormalDistribution`; `encode` is accepted and unused, as every prior's call takes it."""
        return StandardNormalDistribution(
            self.latent_size, self._anchor.device, self._anchor.dtype, validate_args=False
        )


@register_prior("mog", help="a learned mixture of Gaussians")
class MixtureOfGaussiansPrior(nn.Module):
    """A learnable mixture of M diagonal Gaussians; its call is a batch_shape () MixtureOfGaussians."""

    def __init__(self, latent_size: int, components: int, spread: float = 1.0) -> None:
        super().__init__()
        # Spread-out means and unit scales: every component starts where the posteriors of an
        # untrained encoder land (near N(0, I)), but the components are not identical, so
        # their gradients differ from the first step on.
        self.loc = nn.Parameter(spread * torch.randn(components, latent_size))  # (M, D)
        self.log_scale = nn.Parameter(torch.zeros(components, latent_size))  # (M, D)
        self.logits = nn.Parameter(torch.zeros(components))  # (M,)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "MixtureOfGaussiansPrior":
        """The prior with `config.prior_components` components over `config`'s latent size."""
        return cls(config.latent_size, config.prior_components)

    def forward(self, encode: Callable | None = None) -> MixtureOfGaussians:
        """The mixture with the current parameters; `encode` is accepted and unused."""
        return MixtureOfGaussians(self.loc, self.log_scale.exp(), self.logits, validate_args=False)


@contextmanager
def running_stats_only(module: nn.Module | None) -> Iterator[None]:
    """Puts the BatchNorm layers of `module` in eval mode for the block, then restores them.

    Inside, BatchNorm normalises with its running statistics and leaves them untouched.
    Everything else (dropout, if any) keeps its mode.
    """
    norms = [
        m
        for m in (module.modules() if module is not None else ())
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]
    for m in norms:
        m.train(False)
    try:
        yield
    finally:
        for m in norms:
            m.train(True)


@register_prior("vamp", help="the VampPrior, a mixture of posteriors of learned pseudo-inputs; the default")
class VampPrior(nn.Module):
    """p(z) = 1/M sum_m q(z|u_m) over M learnable pseudo-inputs u_m = sigmoid(a_m) (M, C, S, S).

    BatchNorm: the pseudo-inputs are encoded with every BatchNorm layer in eval mode (running
    statistics), also while training. Encoding them in train mode would (a) push the M pseudo-
    inputs' statistics into the running averages that evaluation and sampling use for real
    data, and (b) normalise the pseudo-inputs by their own batch of M, so each u_m's posterior
    would depend on the other pseudo-inputs. With running statistics, u_m's posterior is the
    one `model.encode(u_m)` gives at evaluation time, so the prior trained is the prior sampled.
    The cost is a small train/eval mismatch early on, while the running averages settle.
    """

    frame: torch.Tensor  # a buffer: 1 on the data's pixels, 0 on the zero frame around 28-pixel data

    def __init__(self, latent_size: int, pseudo_inputs: int, channels: int, size: int, border: int = 0) -> None:
        super().__init__()
        self.latent_size = latent_size
        # sigmoid keeps pseudo-inputs inside the data's [0, 1] range without clamping (so the
        # gradient never vanishes at a hard edge); small noise around sigmoid(-1) ~ 0.27, about
        # the mean pixel of binarised Fashion-MNIST/MNIST, breaks the symmetry between them.
        self.pseudo_logits = nn.Parameter(torch.randn(pseudo_inputs, channels, size, size) * 0.5 - 1.0)
        # Real data of 28 pixels sits in a zero frame of the 32-pixel network input; the
        # pseudo-inputs get the same frame so they live where the encoder has seen data.
        mask = torch.zeros(1, 1, size, size)
        mask[..., border : size - border, border : size - border] = 1.0
        self.register_buffer("frame", mask, persistent=False)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "VampPrior":
        """The prior with `config.prior_components` pseudo-inputs of the network's input size,
        framed as zero-padded data is.
        """
        size = config.padded_size
        # Real data of 28 pixels sits in a zero frame of the 32-pixel input; so do the pseudo-inputs.
        return cls(config.latent_size, config.prior_components, config.channels, size, (size - config.image_size) // 2)

    def pseudo_inputs(self) -> torch.Tensor:
        """The pseudo-inputs as images (M, C, S, S) in [0, 1]."""
        return torch.sigmoid(self.pseudo_logits) * self.frame

    def forward(self, encode: Callable[[torch.Tensor], MixtureOfGaussians]) -> MixtureOfGaussians:
        """The mixture of M*K Gaussians: each pseudo-input's posterior under `encode` (the model's encoder),
        its components weighted w_k(u_m) / M. BatchNorm layers of the encoder use running statistics.
        """
        if encode is None:
            raise ValueError("the VampPrior needs the encoder: call model.prior(), not prior_net()")
        # A bound method such as model.encode carries its module; a plain function gets no
        # BatchNorm handling (it is then the caller's business).
        with running_stats_only(getattr(encode, "__self__", None)):
            q = encode(self.pseudo_inputs())  # (M, K, D)
        m, k, d = q.loc.shape
        # Weight of component (m, k) is w_k(u_m) / M; the 1/M is a constant shift of every
        # logit, which the softmax inside MixtureOfGaussians absorbs.
        log_w = torch.log_softmax(q.logits, -1) - math.log(m)  # (M, K)
        return MixtureOfGaussians(
            q.loc.reshape(m * k, d), q.scale.reshape(m * k, d), log_w.reshape(m * k), validate_args=False
        )


def make_prior(config: ModelConfig) -> nn.Module:
    """The prior module registered under config.prior, built from `config`."""
    return prior_spec(config.prior).cls.from_config(config)


__all__ = [
    "StandardNormalPrior",
    "StandardNormalDistribution",
    "MixtureOfGaussiansPrior",
    "VampPrior",
    "running_stats_only",
    "make_prior",
    "MixtureOfGaussians",
]
