"""The mixture-of-Gaussians posterior, in the style of torch.distributions.

`torch.distributions.MixtureSameFamily` has no `rsample` (the component index is discrete),
which is why the ELBO marginalises the component: `component_rsample` gives one
reparameterised draw per component and the objective weights them by `weights`.
"""

from __future__ import annotations

import math

import torch

_LOG_2PI = math.log(2 * math.pi)


class MixtureOfGaussians:
    """A mixture of K diagonal Gaussians in D dimensions.

    loc, scale: (*batch, K, D); logits: (*batch, K). batch_shape is `*batch`, event_shape (D,).
    """

    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, logits: torch.Tensor) -> None:
        if loc.dim() < 2 or loc.shape != scale.shape:
            raise ValueError(f"loc {tuple(loc.shape)} and scale {tuple(scale.shape)} must both be (*batch, K, D)")
        if logits.shape != loc.shape[:-1]:
            raise ValueError(f"logits {tuple(logits.shape)} must be loc's shape without D: {tuple(loc.shape[:-1])}")
        self.loc, self.scale, self.logits = loc, scale, logits

    @classmethod
    def from_logvar(cls, loc: torch.Tensor, logvar: torch.Tensor, logits: torch.Tensor) -> "MixtureOfGaussians":
        # One exponentiation, of half the log-variance: this is the standard deviation
        # (the notebook exponentiated once and used the result as both variance and sd).
        return cls(loc, torch.exp(0.5 * logvar), logits)

    @property
    def batch_shape(self) -> torch.Size:
        return self.loc.shape[:-2]

    @property
    def event_shape(self) -> torch.Size:
        return self.loc.shape[-1:]

    @property
    def components(self) -> int:
        return self.loc.shape[-2]

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=-1)

    @property
    def log_weights(self) -> torch.Tensor:
        return torch.log_softmax(self.logits, dim=-1)

    @property
    def mean(self) -> torch.Tensor:
        return (self.weights.unsqueeze(-1) * self.loc).sum(-2)

    def component_rsample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        """One reparameterised draw from every component: (*sample_shape, *batch, K, D)."""
        shape = torch.Size(sample_shape) + self.loc.shape
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        """Draws from the full mixture: (*sample_shape, *batch, D). No gradient."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        """A component index per draw, then a reparameterised Gaussian draw.

        Gradients reach loc and scale but not the weights (the index is discrete);
        objectives that need weight gradients use `component_rsample`.
        """
        shape = torch.Size(sample_shape) + self.batch_shape
        probs = self.weights.detach().expand(*shape, self.components).reshape(-1, self.components)
        index = torch.multinomial(probs, 1).view(shape)  # (*sample, *batch)
        draws = self.component_rsample(sample_shape)  # (*sample, *batch, K, D)
        gather = index[..., None, None].expand(*shape, 1, draws.shape[-1])
        return draws.gather(-2, gather).squeeze(-2)  # (*sample, *batch, D)

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(value; loc_k, scale_k) for every k: value (*sample, *batch, D) -> (*sample, *batch, K)."""
        z = value.unsqueeze(-2)  # (..., 1, D)
        standardised = (z - self.loc) / self.scale
        return -0.5 * (standardised.pow(2) + _LOG_2PI).sum(-1) - self.scale.log().sum(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The full mixture density: value (*sample, *batch, D) -> (*sample, *batch)."""
        return torch.logsumexp(self.log_weights + self.component_log_prob(value), dim=-1)

    def entropy_of_weights(self) -> torch.Tensor:
        return -(self.weights * self.log_weights).sum(-1)


def diagonal_normal_kl_to_standard(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, scale^2) || N(0, I)) per dimension, elementwise."""
    var = scale.pow(2)
    return 0.5 * (var + loc.pow(2) - 1.0 - torch.log(var))


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)
