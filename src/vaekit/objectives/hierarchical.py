"""Bounds on log p(x) for a hierarchy of L latent groups (`--levels L` >= 2), as plain functions of
the model's distributions: the top group's posterior q(z_L | x) and prior p(z_L) (what
`model.encode_with_context` and `model.prior()` return), and the likelihood and lower groups'
terms of the top-down pass (`model.decode_groups`).

    log p(x) >= E_q [log p(x | z) - (log q(z_L | x) - log p(z_L)) - sum_{l<L} KL(q(z_l | z_>l, x) || p(z_l | z_>l))]

The lower groups' KLs are in closed form given the groups above them (each is a diagonal
Gaussian); the top group's is where the KL table has it (K=1 with N(0, I)), else the Monte Carlo
term. The importance-weighted bounds and the NLL (`bounds.log_likelihood_estimate`, through
`decoding.decoded_log_prob`) weight every group:
log w = log p(x | z) + sum_l [log p(z_l | z_>l) - log q(z_l | z_>l, x)], z drawn ancestrally from q.
"""

from __future__ import annotations

import math

import torch

from vaekit.distributions.kl import closed_form_kl
from vaekit.objectives.decoding import repeat_context
from vaekit.objectives.terms import Terms


def hierarchical_terms(
    model, x_input: torch.Tensor, x_target: torch.Tensor | None = None, samples: int = 1, estimator: str = "marginal"
) -> Terms:
    """The hierarchy's training bound and its parts, per image.

    The top group's mixture is handled as the single-level bounds handle it (`estimator`):
    `marginal` draws every component and weighs them (the ELBO, or SIWAE with samples > 1),
    `stratified` is SIWAE for any S, `pathwise` draws from the full mixture. Each draw of the top
    group runs the top-down pass once, drawing the lower groups from their posteriors.
    .kl_groups holds each group's share of .kl (top first); with an importance-weighted bound
    recon, kl and kl_groups are diagnostics on the same draws.
    """
    x_target = x_input if x_target is None else x_target
    q, context = model.encode_with_context(x_input)  # q: (B, K, D)
    b, k = q.loc.shape[0], q.components
    pathwise = estimator == "pathwise" and k > 1
    if pathwise:
        z = q.rsample((samples,)).unsqueeze(1)  # (S, 1, B, D)
    else:
        z = q.component_rsample((samples,)).transpose(1, 2)  # (S, K, B, D)
    copies = z.shape[0] * z.shape[1]
    repeated = repeat_context(context, copies)  # (S*K*B, ...) in z's order
    px, lower = model.decode_groups(z, repeated)  # batch (S, K, B); lower (S, K, B, L-1, 3)
    log_px = px.log_prob(model.crop(x_target))  # (S, K, B)
    prior = model.prior()
    log_q_top, log_p_top = q.log_prob(z), prior.log_prob(z)  # (S, K, B) each: the full mixture's density
    kl_lower, log_q_lower, log_p_lower = lower.unbind(-1)  # (S, K, B, L-1) each
    # the components' weights over (S, K, B); a pathwise draw already came from the mixture
    log_weights = torch.zeros(1, 1, b, device=z.device) if pathwise else q.log_weights.t()[None]
    weights = log_weights.exp()
    if samples > 1 or (estimator == "stratified" and k > 1):
        log_w = log_px + log_p_top - log_q_top + (log_p_lower - log_q_lower).sum(-1)  # (S, K, B)
        bound = torch.logsumexp(log_weights + log_w, dim=(0, 1)) - math.log(samples)  # (B,)
        kl_groups = torch.cat([(log_q_top - log_p_top)[..., None], log_q_lower - log_p_lower], -1)  # (S, K, B, L)
        kl_groups = (weights[..., None] * kl_groups).sum(1).mean(0)  # (B, L)
        recon = (weights * log_px).sum(1).mean(0)
        return Terms(bound, recon, kl_groups.sum(-1), kl_groups=kl_groups, importance_weighted=True)
    closed_top = closed_form_kl(q, prior)  # (B, D) or None
    kl_top = closed_top.sum(-1) if closed_top is not None else (weights * (log_q_top - log_p_top))[0].sum(0)
    kl_groups = torch.cat([kl_top[:, None], (weights[..., None] * kl_lower)[0].sum(0)], -1)  # (B, L)
    recon = (weights * log_px)[0].sum(0)  # (B,)
    kl = kl_groups.sum(-1)
    return Terms(recon - kl, recon, kl, kl_groups=kl_groups)
