"""Priors p(z). Each is a module whose call returns a distribution with `log_prob` and `sample`.

A call (rather than a fixed object) lets learnable priors rebuild their graph every step, and
lets the VampPrior encode its pseudo-inputs with the current encoder.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .distributions import MixtureOfGaussians, standard_normal_log_prob


class StandardNormalDistribution:
    """N(0, I) in D dimensions."""

    def __init__(self, latent_size: int, device: torch.device, dtype: torch.dtype) -> None:
        self.latent_size, self.device, self.dtype = latent_size, device, dtype

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.latent_size])

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return standard_normal_log_prob(z)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.event_shape
        return torch.randn(shape, device=self.device, dtype=self.dtype)

    rsample = sample


class StandardNormalPrior(nn.Module):
    def __init__(self, latent_size: int) -> None:
        super().__init__()
        self.latent_size = latent_size
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # follows .to(device)

    def forward(self, encode: Callable | None = None) -> StandardNormalDistribution:
        return StandardNormalDistribution(self.latent_size, self._anchor.device, self._anchor.dtype)


def make_prior(kind: str, latent_size: int, components: int, **kwargs) -> nn.Module:
    if kind == "normal":
        return StandardNormalPrior(latent_size)
    raise ValueError(f"unknown prior {kind!r}")


__all__ = ["StandardNormalPrior", "StandardNormalDistribution", "make_prior", "MixtureOfGaussians"]
