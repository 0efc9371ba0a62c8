"""Likelihoods: each normalises over one pixel's support and agrees with torch.distributions."""

import math

import pytest
import torch
from torch import distributions as D

from vaekit.config import ModelConfig, registry
from vaekit.distributions.discretised_logistic import (
    DiscretisedLogisticHead,
    DiscretisedLogisticMixtureImage,
    log_sigmoid_difference,
)
from vaekit.distributions.likelihoods import (
    GAUSSIAN_LOGVAR_MIN,
    BernoulliHead,
    ContinuousBernoulliHead,
    GaussianHead,
    continuous_bernoulli_log_norm,
    continuous_bernoulli_mean,
    make_likelihood,
)

LEVELS = torch.arange(256, dtype=torch.float64) / 255


def _pixels(values, dtype=torch.float64) -> torch.Tensor:
    """(N,) values -> (N, 1, 1, 1): N one-pixel images."""
    return torch.as_tensor(values, dtype=dtype).reshape(-1, 1, 1, 1)


def test_heads_declare_their_data_and_parameter_channels():
    expected = {
        "bernoulli": ("binary", True, 3),
        "continuous-bernoulli": ("grey", False, 3),
        "gaussian": ("grey", False, 3),
        "logistic": ("grey", True, 3 * 3 * 2),
    }
    for kind, (data_kind, discrete, channels) in expected.items():
        spec = registry.likelihood(kind)
        head = make_likelihood(ModelConfig(likelihood=kind, channels=3, image_size=28, logistic_mixtures=2))
        assert (spec.data, spec.discrete, head.param_channels) == (data_kind, discrete, channels), kind
    with pytest.raises(ValueError, match="unknown likelihood"):
        make_likelihood(ModelConfig(likelihood="poisson"))


@pytest.mark.parametrize("kind", list(registry.likelihoods()))
def test_every_head_gives_display_means_and_samples_in_range(kind):
    torch.manual_seed(0)
    binary = registry.likelihood(kind).data == "binary"
    head = make_likelihood(ModelConfig(likelihood=kind, channels=3, image_size=8, logistic_mixtures=2))
    params = 4 * torch.randn(2, 5, head.param_channels, 8, 8)  # leading dims (B, K)
    dist = head(params)
    assert isinstance(dist, D.Distribution)
    assert (dist.batch_shape, dist.event_shape) == ((2, 5), (3, 8, 8))
    x = torch.randint(0, 2 if binary else 256, (2, 1, 3, 8, 8)) / (1 if binary else 255)
    assert dist.log_prob(x).shape == (2, 5)
    for images in (dist.mean, dist.sample()):
        assert images.shape == (2, 5, 3, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert dist.sample((4,)).shape == (4, 2, 5, 3, 8, 8)
    assert type(dist).__name__ in repr(dist)


@pytest.mark.parametrize("kind", list(registry.likelihoods()))
def test_every_image_distribution_validates_its_arguments(kind):
    head = make_likelihood(ModelConfig(likelihood=kind, channels=1, image_size=4))
    dist = head(torch.zeros(3, head.param_channels, 4, 4))
    params = {name: getattr(dist, name) for name in dist.arg_constraints}
    bad = {name: torch.full_like(value, math.nan) for name, value in params.items()}
    with pytest.raises(ValueError):
        type(dist)(**bad, validate_args=True)
    with pytest.raises(ValueError):
        type(dist)(**params, validate_args=True).log_prob(torch.full((3, 1, 4, 4), math.nan))  # in no support


def test_bernoulli_matches_torch():
    logits = torch.randn(4, 2, 5, 5) * 3
    x = torch.bernoulli(torch.rand(4, 2, 5, 5))
    expected = D.Bernoulli(logits=logits).log_prob(x).sum((-3, -2, -1))
    torch.testing.assert_close(BernoulliHead(2)(logits).log_prob(x), expected)


def test_continuous_bernoulli_matches_torch_including_near_one_half():
    logits = torch.tensor(
        [-30.0, -5.0, -0.3, -0.1, -0.0999, -1e-3, 0.0, 1e-6, 0.05, 0.1, 0.1001, 2.0, 25.0], dtype=torch.float64
    )
    x = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    grid, xx = torch.meshgrid(logits, x, indexing="ij")
    ours = ContinuousBernoulliHead(1)(grid.reshape(-1, 1, 1, 1)).log_prob(xx.reshape(-1, 1, 1, 1))
    theirs = D.ContinuousBernoulli(logits=grid.reshape(-1)).log_prob(xx.reshape(-1))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        continuous_bernoulli_mean(logits), D.ContinuousBernoulli(logits=logits).mean, rtol=1e-6, atol=1e-6
    )


def test_continuous_bernoulli_normaliser_is_smooth_and_finite_at_one_half():
    # float32 as in training: both sides of the Taylor switch agree, and the gradient at 0 is 0.
    logits = torch.tensor([-0.1001, -0.0999, 0.0, 0.0999, 0.1001], requires_grad=True)
    log_c = continuous_bernoulli_log_norm(logits)
    assert abs(log_c[0] - log_c[1]) < 1e-5 and abs(log_c[3] - log_c[4]) < 1e-5
    assert abs(log_c[2] - math.log(2)) < 1e-7
    log_c.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[2] == 0


@pytest.mark.parametrize("logit", [-12.0, -1.0, 0.0, 0.03, 3.0])
def test_continuous_bernoulli_integrates_to_one(logit):
    x = torch.linspace(0, 1, 20_001, dtype=torch.float64)
    density = ContinuousBernoulliHead(1)(_pixels([logit] * len(x))).log_prob(_pixels(x)).exp()
    assert abs(torch.trapezoid(density, x).item() - 1) < 1e-6
    mean = torch.trapezoid(density * x, x).item()
    assert abs(continuous_bernoulli_mean(torch.tensor(logit, dtype=torch.float64)).item() - mean) < 1e-6


@pytest.mark.parametrize("variance", ["pixel", "global"])
def test_gaussian_matches_normal_and_integrates_to_one(variance):
    torch.manual_seed(0)
    head = GaussianHead(2, 4, variance).double()
    assert head.logvar.shape == ((2, 4, 4) if variance == "pixel" else ())
    with torch.no_grad():
        head.logvar.uniform_(-6, 0)
    logits = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    logvar = GAUSSIAN_LOGVAR_MIN + torch.nn.functional.softplus(head.logvar - GAUSSIAN_LOGVAR_MIN)  # the smooth floor
    expected = D.Normal(torch.sigmoid(logits), torch.exp(0.5 * logvar)).log_prob(x).sum((-3, -2, -1))
    torch.testing.assert_close(head(logits).log_prob(x), expected)
    # One pixel, over the real line.
    one = GaussianHead(1, 1, variance).double()
    z = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    density = one(_pixels([0.4] * len(z))).log_prob(_pixels(z)).exp()
    assert abs(torch.trapezoid(density, z).item() - 1) < 1e-6


def test_gaussian_variance_has_a_floor_and_learns():
    head = GaussianHead(1, 2, "global")
    with torch.no_grad():
        head.logvar.fill_(-50.0)
    assert head(torch.zeros(1, 1, 2, 2)).logvar.item() == pytest.approx(GAUSSIAN_LOGVAR_MIN)
    head = GaussianHead(1, 2, "pixel")
    assert head(torch.zeros(1, 1, 2, 2)).logvar.flatten()[0].item() == pytest.approx(
        2 * math.log(0.1)
    )  # the start: 0.1^2
    head(torch.zeros(1, 1, 2, 2)).log_prob(torch.full((1, 1, 2, 2), 0.9)).sum().backward()
    assert head.logvar.grad is not None and head.logvar.grad.abs().sum() > 0


def test_gaussian_variance_below_the_floor_still_gets_a_gradient():
    head = GaussianHead(1, 2, "pixel")
    with torch.no_grad():
        head.logvar.fill_(GAUSSIAN_LOGVAR_MIN - 3.0)
    dist = head(torch.zeros(1, 1, 2, 2))
    assert (dist.logvar >= GAUSSIAN_LOGVAR_MIN).all()
    # Far from the mean, a wider variance is more likely: the gradient must say so.
    dist.log_prob(torch.full((1, 1, 2, 2), 0.9)).sum().backward()
    assert (head.logvar.grad > 0).all()


def _logistic_pixel(logits, loc, log_scale, dtype=torch.float64) -> DiscretisedLogisticMixtureImage:
    as_param = lambda v: torch.as_tensor(v, dtype=dtype).reshape(-1, 1, 1, 1)  # noqa: E731  (L, C, H, W)
    return DiscretisedLogisticMixtureImage(as_param(logits), as_param(loc), as_param(log_scale))


def _naive_discretised_logistic(x, logits, loc, log_scale) -> torch.Tensor:
    """Float64 straight from the definition: CDF differences, tails folded into the edges."""
    x = x.reshape(-1, 1)
    loc, scale = torch.tensor(loc, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64).exp()
    upper = torch.where(x > 1 - 1e-9, torch.tensor(float("inf"), dtype=torch.float64), x + 0.5 / 255)
    lower = torch.where(x < 1e-9, torch.tensor(float("-inf"), dtype=torch.float64), x - 0.5 / 255)
    mass = torch.sigmoid((upper - loc) / scale) - torch.sigmoid((lower - loc) / scale)  # (N, L)
    return (torch.softmax(torch.tensor(logits, dtype=torch.float64), 0) * mass).sum(-1)


@pytest.mark.parametrize(
    "logits, loc, log_scale",
    [
        ([0.0], [0.5], [-3.0]),
        ([0.0], [-0.2], [-5.0]),
        ([0.0], [1.3], [-1.0]),
        ([0.0], [0.3], [-7.0]),
        ([0.0], [0.7], [3.0]),
        ([1.0, -0.5, 0.2], [0.1, 0.5, 0.97], [-4.0, -2.0, -6.0]),
    ],
)
def test_discretised_logistic_sums_to_one_and_matches_the_definition(logits, loc, log_scale):
    dist = _logistic_pixel(logits, loc, log_scale)
    log_p = dist.level_log_prob(_pixels(LEVELS)).reshape(-1)  # (256,)
    assert abs(torch.logsumexp(log_p, 0).exp().item() - 1) < 1e-9
    naive = _naive_discretised_logistic(LEVELS, logits, loc, log_scale)
    keep = naive > 1e-8  # where the naive difference of two CDFs near 1 has not cancelled away
    torch.testing.assert_close(log_p[keep], naive.log()[keep], rtol=1e-6, atol=1e-6)
    # float32, as in training: still normalised, and finite at every level.
    log_p32 = (
        _logistic_pixel(logits, loc, log_scale, torch.float32)
        .level_log_prob(_pixels(LEVELS, torch.float32))
        .reshape(-1)
    )
    assert torch.isfinite(log_p32).all() and abs(torch.logsumexp(log_p32.double(), 0).exp().item() - 1) < 1e-4


def test_discretised_logistic_tails_match_high_precision_arithmetic():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    loc, log_scale = 0.3, -4.0
    log_p = _logistic_pixel([0.0], [loc], [log_scale]).level_log_prob(_pixels(LEVELS)).reshape(-1)
    s = mpmath.exp(log_scale)
    cdf = lambda v: 1 / (1 + mpmath.exp(-(v - loc) / s))  # noqa: E731
    for level in (0, 1, 40, 77, 128, 200, 254, 255):
        x = mpmath.mpf(level) / 255
        upper = 1 if level == 255 else cdf(x + mpmath.mpf(1) / 510)
        lower = 0 if level == 0 else cdf(x - mpmath.mpf(1) / 510)
        expected = float(mpmath.log(upper - lower))
        assert abs(log_p[level].item() - expected) < 1e-9 * max(1.0, abs(expected)), level


def test_log_sigmoid_difference_is_accurate_in_both_tails():
    a = torch.tensor([-40.0, -3.0, 0.5, 3.0, 41.0])
    b = a - 0.01
    got = log_sigmoid_difference(a, b)
    expected = torch.log(torch.sigmoid(a.double()) - torch.sigmoid(b.double()))
    expected[-1] = -41.0 + math.log(math.expm1(0.01))  # sigma(41) - sigma(40.99) below float64's resolution near 1
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_discretised_logistic_samples_follow_its_probabilities():
    torch.manual_seed(0)
    head = DiscretisedLogisticHead(1, mixtures=2)
    params = torch.tensor([0.0, 1.0, -0.45, 0.1, -2.5, -3.0]).reshape(1, 6, 1, 1).expand(20_000, 6, 1, 1)
    dist = head(params)
    draws = dist.sample()
    assert torch.equal(draws * 255, torch.round(draws * 255))
    levels = torch.round(draws.reshape(-1) * 255).long()
    freq = torch.bincount(levels, minlength=256).double() / len(levels)
    probs = head(params[:1].double()).level_log_prob(_pixels(LEVELS)).exp().reshape(-1)
    assert (freq - probs).abs().max() < 0.01
    assert abs(freq[0] - probs[0]) < 0.01  # the bottom edge collects the tail below 0


def test_a_confident_logistic_at_the_scale_floor_gives_its_grey_level_over_0_9():
    # One channel, one component: the head's raw parameters are (logit, loc - 0.5, log-scale).
    level = 100 / 255
    params = torch.tensor([0.0, level - 0.5, -30.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    dist = DiscretisedLogisticHead(1)(params)
    probability = dist.log_prob(_pixels([level])).exp().item()
    # The same mass from the logistic's CDF at the bin edges, at the scale the floor leaves.
    scale = dist.log_scale.exp().item()
    edges = torch.tensor([level - 0.5 / 255, level + 0.5 / 255], dtype=torch.float64)
    cdf = torch.sigmoid((edges - level) / scale)
    assert probability == pytest.approx((cdf[1] - cdf[0]).item(), rel=1e-9)
    assert probability > 0.9
