"""The mixture-of-Gaussians posterior, a `torch.distributions.Distribution` with a pathwise `rsample`.

`torch.distributions.MixtureSameFamily` has no `rsample`: the component index is discrete, so
the draw is not a differentiable function of the weights. `MixtureOfGaussians.rsample` draws
the index and then a Gaussian, and attaches gradients by implicit reparameterisation instead:
for every parameter theta it uses a velocity field v_theta(z) that solves the transport
equation  d q(z)/d theta + div(q(z) v_theta(z)) = 0  (Jankowiak & Karaletsos 2019, arXiv
1806.01856), so that  d/d theta E_q[f(z)] = E_q[grad f(z) . v_theta(z)]  for any smooth f.

- loc_k and scale_k: the component's own reparameterisation velocity (1, and (z - loc_k) /
  scale_k, per dimension) times the responsibility r_k(z) = w_k q_k(z) / q(z). This is the
  sample-k-then-reparameterise gradient averaged over which component produced z.
- logit_a: d q / d logit_a = w_a (q_a - q) = w_a sum_l w_l (q_l - q_a), and q_l - q_a is the
  divergence of a field that changes the density one coordinate at a time,
      h_la,d(z) = (Phi_l,d - Phi_a,d)(z_d) prod_{e<d} phi_l,e(z_e) prod_{e>d} phi_a,e(z_e)
  (the sum over d telescopes from q_a to q_l). Averaging it with -h_al, which has the same
  divergence, makes it antisymmetric in (l, a), so shifting every logit at once moves nothing.
  Then v_a = w_a sum_l w_l h~_la / q(z).

Everything is computed in log space (log-CDFs, log-densities, log q), so far-apart
components, tiny weights and D in the hundreds stay finite where densities would underflow.
The cost is O(K^2 D) per draw and no D x D Jacobian; `component_rsample` still gives one
draw per component for the bounds that marginalise the index exactly.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, constraints

LOG_2PI = math.log(2 * math.pi)


class MixtureOfGaussians(Distribution):
    """A mixture of K diagonal Gaussians in D dimensions.

    loc, scale: (*batch, K, D); logits: (*batch, K). batch_shape is `*batch`, event_shape (D,).
    `rsample` is differentiable in all three (see the module docstring).

    >>> q = MixtureOfGaussians(torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(3))
    >>> q.rsample((5,)).shape
    torch.Size([5, 2])
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "logits": constraints.real}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self, loc: torch.Tensor, scale: torch.Tensor, logits: torch.Tensor, validate_args: bool | None = None
    ) -> None:
        if loc.dim() < 2 or loc.shape != scale.shape:
            raise ValueError(f"loc {tuple(loc.shape)} and scale {tuple(scale.shape)} must both be (*batch, K, D)")
        if logits.shape != loc.shape[:-1]:
            raise ValueError(f"logits {tuple(logits.shape)} must be loc's shape without D: {tuple(loc.shape[:-1])}")
        self.loc, self.scale, self.logits = loc, scale, logits
        super().__init__(batch_shape=loc.shape[:-2], event_shape=loc.shape[-1:], validate_args=validate_args)

    @classmethod
    def from_logvar(
        cls, loc: torch.Tensor, logvar: torch.Tensor, logits: torch.Tensor, validate_args: bool | None = None
    ) -> "MixtureOfGaussians":
        """The mixture with scale = exp(logvar / 2): what an encoder that outputs log-variances gives."""
        # One exponentiation, of half the log-variance: this is the standard deviation
        # (the notebook exponentiated once and used the result as both variance and sd).
        return cls(loc, torch.exp(0.5 * logvar), logits, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size | list[int] | tuple[int, ...], _instance=None) -> "MixtureOfGaussians":
        """The same mixture with its parameters expanded (no copy) to `batch_shape`."""
        batch_shape = torch.Size(batch_shape)
        k, d = self.loc.shape[-2:]
        return MixtureOfGaussians(
            self.loc.expand(batch_shape + (k, d)),
            self.scale.expand(batch_shape + (k, d)),
            self.logits.expand(batch_shape + (k,)),
            validate_args=False,
        )

    @property
    def components(self) -> int:
        """K, the number of mixture components."""
        return self.loc.shape[-2]

    @property
    def weights(self) -> torch.Tensor:
        """The mixture weights softmax(logits): (*batch, K)."""
        return torch.softmax(self.logits, dim=-1)

    @property
    def log_weights(self) -> torch.Tensor:
        """The log mixture weights log_softmax(logits): (*batch, K)."""
        return torch.log_softmax(self.logits, dim=-1)

    @property
    def mean(self) -> torch.Tensor:
        """The mixture's mean, sum_k w_k loc_k: (*batch, D)."""
        return (self.weights.unsqueeze(-1) * self.loc).sum(-2)

    @property
    def variance(self) -> torch.Tensor:
        """The mixture's per-dimension variance, the spread between components included: (*batch, D)."""
        second = (self.weights.unsqueeze(-1) * (self.loc.pow(2) + self.scale.pow(2))).sum(-2)
        return second - self.mean.pow(2)

    def component_rsample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """One reparameterised draw from every component: (*sample_shape, *batch, K, D)."""
        shape = torch.Size(sample_shape) + self.loc.shape
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def rsample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """Draws from the full mixture, (*sample_shape, *batch, D), differentiable in loc, scale
        and logits. Its value is the plain draw (index, then a Gaussian); the gradients come
        from a zero-valued term whose derivative is the transport velocity."""
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            probs = self.weights.expand(*shape, self.components).reshape(-1, self.components)
            index = torch.multinomial(probs, 1).view(shape)  # (*sample, *batch)
            # A draw from every component, then the chosen one: K times the noise a single draw
            # needs, but the same random stream as `sample` always used, so evaluations repeat.
            draws = self.component_rsample(sample_shape)  # (*sample, *batch, K, D)
            gather = index[..., None, None].expand(*shape, 1, draws.shape[-1])
            z = draws.gather(-2, gather).squeeze(-2)  # (*sample, *batch, D)
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in (self.loc, self.scale, self.logits)):
            return z
        v_loc, v_scale, v_logits = self.transport_velocities(z)
        moved = (
            (v_loc * (self.loc - self.loc.detach())).sum(-2)
            + (v_scale * (self.scale - self.scale.detach())).sum(-2)
            + (v_logits * (self.logits - self.logits.detach()).unsqueeze(-1)).sum(-2)
        )  # zero, with d/d theta = v_theta: (*sample, *batch, D)
        return z + moved

    @torch.no_grad()
    def transport_velocities(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """dz/d loc, dz/d scale and dz/d logits at draws z (*sample, *batch, D), each
        (*sample, *batch, K, D): entry [k, d] is how z_d moves per unit of loc_k,d, scale_k,d,
        and logit_k (the logit moves every coordinate)."""
        u = (z.unsqueeze(-2) - self.loc) / self.scale  # standardised per component: (..., K, D)
        log_phi = -0.5 * (u.pow(2) + LOG_2PI) - self.scale.log()  # (..., K, D)
        log_q_k = log_phi.sum(-1)  # (..., K)
        log_w = self.log_weights.expand_as(log_q_k)
        log_q = torch.logsumexp(log_w + log_q_k, -1, keepdim=True)  # (..., 1)
        resp = torch.exp(log_w + log_q_k - log_q).unsqueeze(-1)  # (..., K, 1)
        v_loc = resp.expand_as(u)
        v_scale = resp * u
        if self.components == 1:
            return v_loc, v_scale, torch.zeros_like(u)
        # Exclusive prefix and suffix sums, each summed from its own end: a difference of two
        # cumulative sums would cancel catastrophically next to a far-away component's -1e8.
        zero = torch.zeros_like(log_phi[..., :1])
        before = torch.cat([zero, torch.cumsum(log_phi[..., :-1], -1)], -1)  # sum_{e<d} log phi_k,e: (..., K, D)
        after = torch.cat([torch.cumsum(log_phi[..., 1:].flip(-1), -1).flip(-1), zero], -1)  # sum_{e>d}
        # Pairs (a, l) as (..., K, K, D): rows a are the logit's component, columns l the others.
        sign, log_gap = _cdf_difference(u)  # Phi_l - Phi_a at z_d
        paths = torch.logaddexp(
            before[..., None, :, :] + after[..., :, None, :],  # prod_{e<d} phi_l, prod_{e>d} phi_a
            before[..., :, None, :] + after[..., None, :, :],
        ) - math.log(2)  # and the reverse order
        log_pair = log_w[..., :, None, None] + log_w[..., None, :, None] - log_q[..., None, None]  # (..., K, K, 1)
        v_logits = (sign * torch.exp(log_gap + paths + log_pair)).sum(-2)  # (..., K, D)
        return v_loc, v_scale, v_logits

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """Draws from the full mixture: (*sample_shape, *batch, D). No gradient."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(value; loc_k, scale_k) for every k: value (*sample, *batch, D) -> (*sample, *batch, K)."""
        z = value.unsqueeze(-2)  # (..., 1, D)
        standardised = (z - self.loc) / self.scale
        return -0.5 * (standardised.pow(2) + LOG_2PI).sum(-1) - self.scale.log().sum(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The full mixture density: value (*sample, *batch, D) -> (*sample, *batch)."""
        if self._validate_args:
            self._validate_sample(value)
        return torch.logsumexp(self.log_weights + self.component_log_prob(value), dim=-1)

    def entropy_of_weights(self) -> torch.Tensor:
        """The entropy of the mixture weights, -sum_k w_k log w_k: (*batch); 0 when one component has it all."""
        return -(self.weights * self.log_weights).sum(-1)


def _cdf_difference(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For standardised values u (..., K, D): sign and log|Phi(u_l) - Phi(u_a)| for every pair,
    (..., K_a, K_l, D), from whichever tail keeps the digits: the upper tail Phi(-u) where both
    are large, so two CDFs that both round to 1 still differ. The log-CDFs are computed once per
    component, not per pair: they are most of the cost."""
    log_cdf, log_sf = torch.special.log_ndtr(u), torch.special.log_ndtr(-u)  # (..., K, D)
    u_a, u_l = u[..., :, None, :], u[..., None, :, :]
    upper = (u_a + u_l) > 0
    lo = torch.where(upper, log_sf[..., :, None, :], log_cdf[..., None, :, :])  # Phi(-u_a) or Phi(u_l)
    hi = torch.where(upper, log_sf[..., None, :, :], log_cdf[..., :, None, :])  # Phi(-u_l) or Phi(u_a)
    big, small = torch.maximum(lo, hi), torch.minimum(lo, hi)
    log_gap = big + torch.log(-torch.expm1(small - big))  # -inf where they are equal
    return torch.sign(u_l - u_a), log_gap


def diagonal_normal_kl_to_standard(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, scale^2) || N(0, I)) per dimension, elementwise."""
    var = scale.pow(2)
    return 0.5 * (var + loc.pow(2) - 1.0 - torch.log(var))


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
