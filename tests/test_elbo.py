"""The ELBO is a lower bound: below an importance-sampled estimate of log p(x)."""

import torch

from vaekit.config import ModelConfig
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import elbo_terms, log_likelihood_estimate


def test_elbo_below_importance_sampled_log_likelihood():
    for components in (1, 3):
        torch.manual_seed(components)
        model = VAE(ModelConfig(latent_size=3, components=components, image_size=28, prior="normal")).eval()
        with torch.no_grad():  # a posterior far from the prior, so the bound has a gap to show
            model.encoder.loc_head.bias.fill_(1.5)
        x = torch.bernoulli(torch.rand(4, 1, 32, 32))
        with torch.no_grad():
            elbo = torch.stack([elbo_terms(model, x).elbo for _ in range(20)]).mean(0)
            log_px = log_likelihood_estimate(model, x, samples=300)
        gap = (log_px - elbo).mean()
        assert gap > 1.0, f"K={components}: ELBO {elbo.mean():.2f} above log p(x) estimate {log_px.mean():.2f}"


def test_elbo_terms_add_up_and_kl_is_non_negative_for_k1():
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=4, image_size=28, prior="normal"))
    x = torch.bernoulli(torch.rand(5, 1, 32, 32))
    t = elbo_terms(model, x)
    torch.testing.assert_close(t.elbo, t.recon - t.kl)
    assert (t.kl >= 0).all() and (t.recon <= 0).all()
    assert t.elbo.shape == (5,)


def test_mixture_elbo_equals_weighted_component_bounds():
    # Recompute the K-component ELBO by hand from the same draws, in float64.
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=2, components=3, image_size=28, prior="normal")).double().eval()
    x = torch.bernoulli(torch.rand(4, 1, 32, 32, dtype=torch.float64))
    torch.manual_seed(5)
    got = elbo_terms(model, x).elbo
    torch.manual_seed(5)
    q = model.encode(x)
    z = q.component_rsample()  # (B, K, D)
    expected = torch.zeros(4, dtype=torch.float64)
    w = torch.softmax(q.logits, -1)
    for b in range(4):
        for k in range(3):
            zk = z[b, k]
            log_px = model.decode(zk[None]).log_prob(model.crop(x[b : b + 1]))[0]
            log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(zk).sum()
            comps = torch.distributions.Normal(q.loc[b], q.scale[b]).log_prob(zk).sum(-1)  # (K,)
            log_qz = torch.logsumexp(torch.log(w[b]) + comps, 0)
            expected[b] += w[b, k] * (log_px + log_pz - log_qz)
    torch.testing.assert_close(got, expected)
