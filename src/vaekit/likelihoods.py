"""Likelihoods p(x|z) over whole images: `log_prob` sums over channels and pixels.

The decoder emits raw parameters (logits for the Bernoulli); each head turns them into a
distribution object, so the sigmoid is applied only where images are shown.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BernoulliImage:
    """Independent Bernoulli pixels parameterised by logits (*batch, C, H, W)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        # x * l - softplus(l) is -BCE-with-logits, written so x broadcasts over extra batch dims.
        return (x * self.logits - F.softplus(self.logits)).sum((-3, -2, -1))

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def sample(self) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.mean)


class BernoulliHead(nn.Module):
    is_likelihood_of_grey_levels = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    @property
    def param_channels(self) -> int:
        return self.channels

    def forward(self, params: torch.Tensor) -> BernoulliImage:
        return BernoulliImage(params)


def make_likelihood(kind: str, channels: int, size: int, **kwargs) -> nn.Module:
    if kind == "bernoulli":
        return BernoulliHead(channels)
    raise ValueError(f"unknown likelihood {kind!r}")
