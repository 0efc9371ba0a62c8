"""The mixture posterior against independent computations."""

import math

import torch

from vaekit.distributions.mixture import MixtureOfGaussians, diagonal_normal_kl_to_standard, standard_normal_log_prob


def _mixture(batch=3, k=4, d=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, k, d, generator=g, dtype=dtype)
    scale = torch.rand(batch, k, d, generator=g, dtype=dtype) + 0.3
    logits = torch.randn(batch, k, generator=g, dtype=dtype)
    return MixtureOfGaussians(loc, scale, logits)


def test_log_prob_matches_brute_force_float64():
    q = _mixture()
    z = torch.randn(7, 3, 5)
    got = q.log_prob(z)  # (7, 3)
    assert got.shape == (7, 3)
    expected = torch.empty(7, 3, dtype=torch.float64)
    for s in range(7):
        for b in range(3):
            total = 0.0
            w = torch.softmax(q.logits[b].double(), 0)
            for k in range(4):
                density = 1.0
                for d in range(5):
                    m, sd, x = q.loc[b, k, d].double(), q.scale[b, k, d].double(), z[s, b, d].double()
                    density *= math.exp(-0.5 * ((x - m) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
                total += w[k] * density
            expected[s, b] = math.log(total)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_log_prob_matches_torch_mixture_same_family():
    q = _mixture(dtype=torch.float64)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=q.logits),
        torch.distributions.Independent(torch.distributions.Normal(q.loc, q.scale), 1),
    )
    z = torch.randn(11, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z))


def test_shapes_of_samples():
    q = _mixture(batch=2, k=3, d=4)
    assert q.component_rsample().shape == (2, 3, 4)
    assert q.component_rsample((5,)).shape == (5, 2, 3, 4)
    assert q.rsample((6,)).shape == (6, 2, 4)
    assert q.sample().shape == (2, 4)
    assert q.weights.shape == (2, 3)
    torch.testing.assert_close(q.weights.sum(-1), torch.ones(2))


def test_rsample_draws_from_the_mixture():
    # Two far-apart 1-D components with weights 0.2 / 0.8: the share of draws near each mode
    # must follow the weights, and each mode's spread its scale.
    loc = torch.tensor([[[-10.0], [10.0]]])
    scale = torch.tensor([[[1.0], [2.0]]])
    logits = torch.log(torch.tensor([[0.2, 0.8]]))
    q = MixtureOfGaussians(loc, scale, logits)
    torch.manual_seed(0)
    z = q.rsample((40000,))[:, 0, 0]
    right = z > 0
    assert abs(right.float().mean().item() - 0.8) < 0.01
    assert abs(z[right].std().item() - 2.0) < 0.05
    assert abs(z[~right].mean().item() + 10.0) < 0.05


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(1)
    loc = torch.randn(4, 6, dtype=torch.float64)
    scale = torch.rand(4, 6, dtype=torch.float64) + 0.2
    analytic = diagonal_normal_kl_to_standard(loc, scale).sum(-1)
    q = torch.distributions.Normal(loc, scale)
    z = q.sample((400000,))
    mc = (q.log_prob(z).sum(-1) - standard_normal_log_prob(z)).mean(0)
    torch.testing.assert_close(mc, analytic, rtol=0, atol=0.02)


def test_gradients_reach_mixture_logits_through_the_elbo():
    from vaekit.config import ModelConfig
    from vaekit.models.vae import VAE
    from vaekit.objectives.bounds import elbo_terms

    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=3, components=3, image_size=28))
    x = torch.bernoulli(torch.rand(4, 1, 32, 32))
    elbo_terms(model, x).elbo.mean().backward()
    grad = model.encoder.logits_head.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_constructor_names_both_shapes_on_mismatch():
    import pytest

    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 3\)"):
        MixtureOfGaussians(torch.zeros(2, 3, 4), torch.ones(2, 3, 4), torch.zeros(2, 4))
