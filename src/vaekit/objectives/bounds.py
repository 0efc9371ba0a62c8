"""Bounds on log p(x), as plain functions of the model's distributions.

All terms are per example, in nats, summed over pixels and latent dimensions.
"""

from __future__ import annotations

import math

import torch

from vaekit.distributions.kl import closed_form_kl
from vaekit.objectives.decoding import decoded_log_prob, nll_chunk
from vaekit.objectives.hierarchical import hierarchical_terms
from vaekit.objectives.terms import Terms


def elbo_terms(model, x_input: torch.Tensor, x_target: torch.Tensor | None = None) -> Terms:
    """ELBO(x) = sum_k w_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)], z_k ~ q_k reparameterised.

    Marginalising the component index exactly gives the weights an honest gradient. Where
    the KL table has q and the prior (K=1 with the standard-normal prior) the KL is analytic.
    """
    if model.config.levels > 1:
        return hierarchical_terms(model, x_input, x_target)
    x_target = x_input if x_target is None else x_target
    q = model.encode(x_input)  # (B, K, D)
    z = q.component_rsample()  # (B, K, D)
    px = model.decode(z)  # (B, K, C, H, W)
    log_px = px.log_prob(model.crop(x_target).unsqueeze(1))  # (B, K)
    prior = model.prior()
    kl_per_dim = closed_form_kl(q, prior)  # (B, D) or None
    if kl_per_dim is not None:
        recon, kl = log_px[:, 0], kl_per_dim.sum(-1)
        return Terms(recon - kl, recon, kl, kl_per_dim, latent_size=z.shape[-1])
    log_qz = q.log_prob(z.transpose(0, 1)).transpose(0, 1)  # full mixture density at each z_k: (B, K)
    log_pz = prior.log_prob(z)  # (B, K)
    w = q.weights
    recon = (w * log_px).sum(-1)
    kl = (w * (log_qz - log_pz)).sum(-1)
    return Terms(recon - kl, recon, kl, latent_size=z.shape[-1])


def log_likelihood_estimate(model, x: torch.Tensor, samples: int, chunk: int | None = None, bar=None) -> torch.Tensor:
    """logsumexp_s[log p(x|z_s) + log p(z_s) - log q(z_s|x)] - log S per image: (B,) float64.

    The importance-sampled estimate of log p(x) that evaluation reports, and the IWAE bound
    (Burda et al. 2015) with S samples: it tightens towards log p(x) as S grows. z_s come from
    the full mixture q(z|x) (component index sampled: this is for evaluation, not gradients;
    training uses iwae_terms). With levels >= 2, z is the top group and decoded_log_prob draws
    the lower groups from their posteriors and adds their log p - log q to each weight.

    Samples are drawn in chunks of ~`chunk` decoded images, each chunk for all B images at
    once, and folded into a running logsumexp, so memory stays bounded whatever S is.
    """
    b = x.shape[0]
    q, context = model.encode_with_context(x)  # (B, K, D); a hierarchy's bottom-up activations
    prior = model.prior()
    target = model.crop(x)
    per_chunk = max(1, (chunk or nll_chunk(x.device)) // b)
    total = torch.full((b,), -math.inf, dtype=torch.float64, device=x.device)
    for start in range(0, samples, per_chunk):
        s = min(per_chunk, samples - start)
        z = q.sample((s,))  # (s, B, D)
        log_w = decoded_log_prob(model, z, target, context) + prior.log_prob(z) - q.log_prob(z)  # (s, B)
        total = torch.logaddexp(total, torch.logsumexp(log_w.double(), 0))
        if bar is not None:
            bar.update(s * b)
    return total - math.log(samples)


def iwae_terms(model, x_input: torch.Tensor, x_target: torch.Tensor | None, samples: int) -> Terms:
    """The importance-weighted bound (Burda et al. 2015), stratified over the K components of
    q(z|x) when K > 1 (SIWAE, Morningstar et al. 2021):

        log sum_k w_k (1/S) sum_s p(x, z_ks) / q(z_ks|x),   z_ks ~ q_k reparameterised,

    with q the full mixture density. Drawing S samples from every component and weighting
    them by w_k is an unbiased estimate of p(x) whatever the weights are, so the bound stays
    exact in the weights and they get an honest gradient (no discrete component draw). K=1 is
    the plain IWAE bound; S=1 and K=1 is the ELBO on the same sample.

    .elbo is the bound; .recon and .kl are the ELBO-style diagnostics on the same draws
    (sum_k w_k mean_s of log p(x|z) and of log q(z|x) - log p(z)), so recon - kl <= elbo.
    With levels >= 2 it is the hierarchy's bound over every group (the top group's components stratified).
    """
    if model.config.levels > 1:
        return hierarchical_terms(model, x_input, x_target, samples, "stratified")
    x_target = x_input if x_target is None else x_target
    q = model.encode(x_input)  # (B, K, D)
    z = q.component_rsample((samples,))  # (S, B, K, D)
    px = model.decode(z)  # (S, B, K, C, H, W)
    log_px = px.log_prob(model.crop(x_target).unsqueeze(1))  # (S, B, K)
    log_qz = q.log_prob(z.transpose(1, 2)).transpose(1, 2)  # full mixture density at each z_ks: (S, B, K)
    log_pz = model.prior().log_prob(z)  # (S, B, K)
    log_w = log_px + log_pz - log_qz  # (S, B, K)
    bound = torch.logsumexp(q.log_weights + log_w, dim=(0, 2)) - math.log(samples)  # (B,)
    w = q.weights  # (B, K)
    recon = (w * log_px.mean(0)).sum(-1)
    kl = (w * (log_qz - log_pz).mean(0)).sum(-1)
    return Terms(bound, recon, kl, latent_size=z.shape[-1], importance_weighted=True)


def pathwise_terms(model, x_input: torch.Tensor, x_target: torch.Tensor | None, samples: int = 1) -> Terms:
    """The ELBO (S=1) or the IWAE bound (S>1) with S draws from the full mixture q(z|x), one
    decoder pass per draw whatever K is:

        log (1/S) sum_s p(x, z_s) / q(z_s|x),   z_s ~ q(z|x) by MixtureOfGaussians.rsample,

    whose gradients reach the locs, scales and mixture logits through the transport velocity.
    In expectation the S=1 value is the same ELBO that `elbo_terms` computes exactly over the
    components, which is why validation keeps using that one: it has less noise.
    With levels >= 2 it is the hierarchy's bound over every group, the top group drawn this way.
    """
    if model.config.levels > 1:
        return hierarchical_terms(model, x_input, x_target, samples, "pathwise")
    x_target = x_input if x_target is None else x_target
    q = model.encode(x_input)  # (B, K, D)
    z = q.rsample((samples,))  # (S, B, D)
    log_px = model.decode(z).log_prob(model.crop(x_target))  # (S, B)
    log_q_minus_p = q.log_prob(z) - model.prior().log_prob(z)  # (S, B)
    if samples == 1:
        recon, kl = log_px[0], log_q_minus_p[0]
        return Terms(recon - kl, recon, kl, latent_size=z.shape[-1])
    bound = torch.logsumexp(log_px - log_q_minus_p, dim=0) - math.log(samples)  # (B,)
    return Terms(bound, log_px.mean(0), log_q_minus_p.mean(0), latent_size=z.shape[-1], importance_weighted=True)


def training_loss(terms: Terms, beta: float = 1.0, free_bits: float = 0.0) -> torch.Tensor:
    """Mean over the batch of -(recon - beta * KL); beta=1 and no free bits is the negative ELBO.

    For importance-weighted terms the loss is -bound: the bound is not a sum of a
    reconstruction and a KL, so beta and free bits have nothing to act on (config validation
    refuses them together with --iw-samples).
    """
    if terms.importance_weighted:
        if beta != 1.0 or free_bits > 0:
            raise ValueError(
                f"beta ({beta}) and free bits ({free_bits}) apply to the ELBO only, not to an importance-weighted bound"
            )
        return -terms.elbo.mean()
    if free_bits > 0:
        if terms.kl_per_dim is None:
            raise ValueError("free bits need the per-dimension KL, which only K=1 with the normal prior has")
        # Free bits per latent dimension (Kingma et al. 2016): no pressure below the floor,
        # judged on the batch average so single examples can still go under it.
        kl = torch.clamp(terms.kl_per_dim.mean(0), min=free_bits).sum()
    else:
        kl = terms.kl.mean()
    return -(terms.recon.mean() - beta * kl)
