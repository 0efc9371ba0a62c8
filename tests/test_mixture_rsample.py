"""MixtureOfGaussians.rsample's pathwise gradients against closed forms, by Monte Carlo in float64."""

from __future__ import annotations

import math

import pytest
import torch

from vaekit.distributions.mixture import MixtureOfGaussians

GROUPS, PER_GROUP = 100, 1000  # 10^5 draws, split into groups to estimate the standard error
# Component means drawn with this spread against scales of 0.4-1.4 overlap. The logits' transport
# velocity carries mass between components through the low-density valley between them, so its
# variance grows like exp(separation^2 / 2): with components 3-4 scales apart the estimate stays
# unbiased but is so heavy-tailed that 10^5 draws misjudge its own standard error
# (benchmarks/README.md, "mixture gradients", has the measurements).
SPREAD = 0.7


def _params(k: int, d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    loc = (SPREAD * torch.randn(k, d, generator=g, dtype=torch.float64)).requires_grad_()
    scale = (0.4 + torch.rand(k, d, generator=g, dtype=torch.float64)).requires_grad_()
    logits = torch.randn(k, generator=g, dtype=torch.float64).requires_grad_()
    return [loc, scale, logits]


def _direction(d: int) -> torch.Tensor:
    return torch.linspace(-0.4, 0.3, d, dtype=torch.float64)


# Each test function f(z) (draws (..., D) -> (...)) with its exact expectation under the mixture.
def _mean_f(z, a):
    return z @ a


def _mean_exact(w, loc, scale, a):
    return (w * (loc @ a)).sum()


def _square_f(z, a):
    return (z.pow(2) * a).sum(-1)


def _square_exact(w, loc, scale, a):
    return (w * ((loc.pow(2) + scale.pow(2)) @ a)).sum()


def _exp_f(z, a):
    return torch.exp(z @ a)


def _exp_exact(w, loc, scale, a):
    return (w * torch.exp(loc @ a + 0.5 * scale.pow(2) @ a.pow(2))).sum()


CASES = {"E[a.z]": (_mean_f, _mean_exact), "E[a.z^2]": (_square_f, _square_exact), "E[exp(a.z)]": (_exp_f, _exp_exact)}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("d", [1, 2, 8])
def test_monte_carlo_gradient_matches_the_closed_form(name: str, k: int, d: int) -> None:
    f, exact = CASES[name]
    params = _params(k, d, seed=100 * k + d)
    loc, scale, logits = params
    a = _direction(d)
    exact_grads = torch.autograd.grad(exact(torch.softmax(logits, -1), loc, scale, a), params, allow_unused=True)
    want = torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, exact_grads)])
    # GROUPS copies of the distribution as one batch: one backward gives each group's gradient.
    copies = [p.detach().expand(GROUPS, *p.shape).clone().requires_grad_() for p in params]
    torch.manual_seed(1000 + 10 * k + d)
    z = MixtureOfGaussians(*copies).rsample((PER_GROUP,))  # (N, G, D)
    grads = torch.autograd.grad(f(z, a).mean(0).sum(), copies, materialize_grads=True)
    grads = torch.cat([g.reshape(GROUPS, -1) for g in grads], 1)  # (G, P): one gradient estimate per group of draws
    mean, stderr = grads.mean(0), grads.std(0) / math.sqrt(GROUPS)
    if k == 1:  # one logit: its gradient is exactly zero and so is the estimate
        assert torch.all(grads[:, -1] == 0)
        mean, stderr, want = mean[:-1], stderr[:-1], want[:-1]
    # Where the estimator has no variance (d/d loc of E[a.z] is a, draw by draw) only rounding is allowed.
    tolerance = 4 * stderr + 1e-9 * (1 + want.abs())
    worst = ((mean - want).abs() / tolerance).max()
    assert worst < 1, f"{name}, K={k}, D={d}: error {worst:.2f} x (4 standard errors)"


def test_one_component_is_the_ordinary_reparameterisation() -> None:
    loc, scale, logits = _params(1, 3, seed=7)
    torch.manual_seed(3)
    z = MixtureOfGaussians(loc, scale, logits).rsample((50,))
    eps = ((z - loc) / scale).detach()
    a = _direction(3)
    ours = torch.autograd.grad(torch.exp(z @ a).sum(), [loc, scale])
    plain = torch.autograd.grad(torch.exp((loc + scale * eps) @ a).sum(), [loc, scale])
    for got, want in zip(ours, plain):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_rsample_has_the_mixture_s_moments() -> None:
    loc, scale, logits = (p.detach() for p in _params(3, 2, seed=11))
    q = MixtureOfGaussians(loc, scale, logits)
    torch.manual_seed(5)
    z = q.rsample((200_000,))
    n = z.shape[0]
    assert ((z.mean(0) - q.mean).abs() / (q.variance / n).sqrt()).max() < 4
    torch.testing.assert_close(z.var(0), q.variance, rtol=0.02, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["tiny weight", "scale 1e-3", "scale 1e3", "50 sd apart"])
def test_gradients_stay_finite_in_extreme_mixtures(case: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    b, k, d = 64, 5, 32  # VAE-like: a batch of posteriors over 32 latent dimensions
    loc = torch.randn(b, k, d, dtype=dtype)
    scale = torch.full((b, k, d), 0.1, dtype=dtype)
    logits = torch.zeros(b, k, dtype=dtype)
    if case == "tiny weight":
        logits[:, 0] = math.log(1e-8)
    elif case == "scale 1e-3":
        scale[:, ::2] = 1e-3
    elif case == "scale 1e3":
        scale[:, ::2] = 1e3
    else:
        loc = 50 * 0.1 * torch.arange(k, dtype=dtype)[None, :, None].expand(b, k, d).clone()
    params = [p.requires_grad_() for p in (loc, scale, logits)]
    z = MixtureOfGaussians(*params).rsample((4,))
    loss = (z.pow(2).sum(-1) + MixtureOfGaussians(*params).log_prob(z)).sum()
    grads = torch.autograd.grad(loss, params)
    assert torch.isfinite(z).all() and torch.isfinite(loss)
    for name, g in zip(("loc", "scale", "logits"), grads):
        assert torch.isfinite(g).all(), f"{case}: non-finite gradient for {name}"
    assert grads[2].abs().sum() > 0 or case == "50 sd apart"  # the weights do get a gradient


def test_shifting_every_logit_moves_no_draw() -> None:
    # softmax(logits + c) = softmax(logits): the antisymmetric field gives a zero velocity sum.
    loc, scale, logits = (p.detach() for p in _params(4, 3, seed=2))
    q = MixtureOfGaussians(loc, scale, logits)
    _, _, v_logits = q.transport_velocities(q.sample((100,)))
    torch.testing.assert_close(v_logits.sum(-2), torch.zeros(100, 3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_it_is_a_torch_distribution() -> None:
    q = MixtureOfGaussians(torch.zeros(2, 3, 4), torch.ones(2, 3, 4), torch.zeros(2, 3))
    assert isinstance(q, torch.distributions.Distribution)
    assert q.batch_shape == (2,) and q.event_shape == (4,)
    assert q.expand((5, 2)).sample((7,)).shape == (7, 5, 2, 4)
    with pytest.raises(ValueError):
        MixtureOfGaussians(torch.zeros(2, 3, 4), -torch.ones(2, 3, 4), torch.zeros(2, 3), validate_args=True)
