"""Bounds on log p(x), as plain functions of the model's distributions.

All terms are per example, in nats, summed over pixels and latent dimensions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .distributions import diagonal_normal_kl_to_standard
from .priors import StandardNormalPrior


@dataclass
class Terms:
    elbo: torch.Tensor  # (B,) the bound on log p(x)
    recon: torch.Tensor  # (B,) E_q[log p(x|z)]
    kl: torch.Tensor  # (B,) E_q[log q(z|x) - log p(z)]
    kl_per_dim: torch.Tensor | None = None  # (B, D) when the KL is analytic (K=1, normal prior)


def elbo_terms(model, x_input: torch.Tensor, x_target: torch.Tensor | None = None) -> Terms:
    """ELBO(x) = sum_k w_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)], z_k ~ q_k reparameterised.

    Marginalising the component index exactly gives the weights an honest gradient. For
    K=1 with the standard-normal prior the KL is analytic.
    """
    x_target = x_input if x_target is None else x_target
    q = model.encode(x_input)  # (B, K, D)
    z = q.component_rsample()  # (B, K, D)
    px = model.decode(z)  # all K samples in one decoder call: (B, K, C, H, W)
    log_px = px.log_prob(model.crop(x_target).unsqueeze(1))  # (B, K)
    if q.components == 1 and isinstance(model.prior_net, StandardNormalPrior):
        kl_per_dim = diagonal_normal_kl_to_standard(q.loc[:, 0], q.scale[:, 0])  # (B, D)
        recon, kl = log_px[:, 0], kl_per_dim.sum(-1)
        return Terms(recon - kl, recon, kl, kl_per_dim)
    log_qz = q.log_prob(z.transpose(0, 1)).transpose(0, 1)  # full mixture density at each z_k: (B, K)
    log_pz = model.prior().log_prob(z)  # (B, K)
    w = q.weights
    recon = (w * log_px).sum(-1)
    kl = (w * (log_qz - log_pz)).sum(-1)
    return Terms(recon - kl, recon, kl)


def log_importance_weights(model, x: torch.Tensor, samples: int, chunk: int = 0, x_target: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x, z_s) - log q(z_s|x) for z_s drawn from the full mixture: (S, B).

    Chunked over samples so that at most ~`chunk` images are decoded at once.
    """
    x_target = model.crop(x if x_target is None else x_target)
    q = model.encode(x)
    prior = model.prior()
    per_chunk = max(1, (chunk or 4096) // x.shape[0])
    out = []
    for start in range(0, samples, per_chunk):
        s = min(per_chunk, samples - start)
        z = q.sample((s,)) if not torch.is_grad_enabled() else q.rsample((s,))  # (s, B, D)
        log_w = model.decode(z).log_prob(x_target) + prior.log_prob(z) - q.log_prob(z)  # (s, B)
        out.append(log_w)
    return torch.cat(out)


def iwae_bound(model, x: torch.Tensor, samples: int, chunk: int = 0) -> torch.Tensor:
    """logsumexp_s(log w_s) - log S: a lower bound on log p(x) that tightens with S. (B,)"""
    log_w = log_importance_weights(model, x, samples, chunk)
    return torch.logsumexp(log_w, 0) - math.log(samples)


def iwae_terms(model, x_input: torch.Tensor, x_target: torch.Tensor | None, samples: int) -> Terms:
    """Placeholder replaced by the stratified (SIWAE) bound; see issue on objectives."""
    raise NotImplementedError("iw_samples > 1 is not available yet")


def training_loss(terms: Terms, beta: float = 1.0, free_bits: float = 0.0) -> torch.Tensor:
    """Mean over the batch of -(recon - beta * KL); beta=1 and no free bits is the negative ELBO."""
    if free_bits > 0 and terms.kl_per_dim is not None:
        # Free bits per latent dimension (Kingma et al. 2016): no pressure below the floor,
        # judged on the batch average so single examples can still go under it.
        kl = torch.clamp(terms.kl_per_dim.mean(0), min=free_bits).sum()
    elif free_bits > 0:
        kl = torch.clamp(terms.kl.mean(), min=free_bits)
    else:
        kl = terms.kl.mean()
    return -(terms.recon.mean() - beta * kl)
