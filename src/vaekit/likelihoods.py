"""Likelihoods p(x|z) over whole images: `log_prob` sums over channels and pixels.

The decoder emits raw parameters (`param_channels` per pixel); each head module turns them into
a `torch.distributions.Distribution` over images (event_shape (C, H, W)), so sigmoids and the
like are applied only where they are needed. Every one has `log_prob(x)` (x broadcasts over
leading batch dims), `.mean` (images in [0, 1] for display) and `sample()`.

Each head is registered (registry.register_likelihood) with what it models: "binary" or "grey"
data, and whether `log_prob` is a log probability (a true NLL, reportable in bits/dim) rather
than a log density, whose value depends on the units of x. Heads make their distributions
with validate_args=False: a NaN from the networks is the training loop's to report.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, constraints

from .config import ModelConfig
from .registry import likelihood as likelihood_spec
from .registry import register_likelihood

_LOG_2PI = math.log(2 * math.pi)
LEVELS = 256  # 8-bit data: x in {0, 1/255, ..., 1}


def _sum_pixels(t: torch.Tensor) -> torch.Tensor:
    return t.sum((-3, -2, -1))


class ImageDistribution(Distribution):
    """Independent pixels: batch_shape is `*batch`, event_shape (C, H, W) of `pixels` (*batch, C, H, W)."""

    def __init__(self, pixels: torch.Tensor, validate_args: bool | None = None) -> None:
        if pixels.dim() < 3:
            raise ValueError(f"image parameters must be (*batch, C, H, W), got {tuple(pixels.shape)}")
        super().__init__(batch_shape=pixels.shape[:-3], event_shape=pixels.shape[-3:], validate_args=validate_args)

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(x)
        return x

    def _sample_shape(self, sample_shape: torch.Size | tuple) -> torch.Size:
        return torch.Size(sample_shape) + self.batch_shape + self.event_shape


# --- Bernoulli -----------------------------------------------------------------------------

class BernoulliImage(ImageDistribution):
    """Independent Bernoulli pixels parameterised by logits (*batch, C, H, W)."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 3)

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        self.logits = logits
        super().__init__(logits, validate_args)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        # x * l - softplus(l) is -BCE-with-logits, written so x broadcasts over extra batch dims.
        return _sum_pixels(self._checked(x) * self.logits - F.softplus(self.logits))

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.mean.expand(self._sample_shape(sample_shape)))


@register_likelihood("bernoulli", discrete=True, data="binary", title="Bernoulli", help="pixels in {0, 1}; the default")
class BernoulliHead(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    @classmethod
    def from_config(cls, config: ModelConfig) -> "BernoulliHead":
        return cls(config.channels)

    @property
    def param_channels(self) -> int:
        return self.channels

    def forward(self, params: torch.Tensor) -> BernoulliImage:
        return BernoulliImage(params, validate_args=False)


# --- Continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019) --------------------------------

# Below this |logit| the closed forms cancel catastrophically (0/0 at exactly 0); their Taylor
# series are accurate to ~1e-10 there.
_CB_TAYLOR = 0.1


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda), C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), lambda = sigmoid(logits).

    In logits the constant simplifies to C = l / tanh(l / 2) (since 1 - 2 sigmoid(l) =
    -tanh(l/2) and artanh of that is -l/2): even in l, and 2 at l = 0. Near 0 we use
    log(u / tanh u) = u^2/3 - 7 u^4/90 + O(u^6) with u = l/2.
    """
    a = logits.abs()
    small = a < _CB_TAYLOR
    safe = torch.where(small, torch.full_like(a, _CB_TAYLOR), a)  # keeps NaN out of the unused branch's gradient
    exact = torch.log(safe) - torch.log(torch.tanh(safe / 2))
    u2 = (a / 2).pow(2)
    series = math.log(2.0) + u2 / 3 - 7 * u2.pow(2) / 90
    return torch.where(small, series, exact)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] = lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)) = 1 / (1 - e^-l) - 1 / l."""
    small = logits.abs() < _CB_TAYLOR
    safe = torch.where(small, torch.full_like(logits, _CB_TAYLOR), logits)
    exact = -1.0 / torch.expm1(-safe) - 1.0 / safe
    series = 0.5 + logits / 12 - logits.pow(3) / 720
    return torch.where(small, series, exact)


class ContinuousBernoulliImage(ImageDistribution):
    """Independent continuous-Bernoulli pixels on [0, 1], logits (*batch, C, H, W).

    Unlike the Bernoulli on grey levels, this is a normalised density on [0, 1]. Its lambda
    is not its mean; `.mean` is the distribution's mean.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.unit_interval, 3)

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        self.logits = logits
        super().__init__(logits, validate_args)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        l = self.logits
        return _sum_pixels(self._checked(x) * l - F.softplus(l) + continuous_bernoulli_log_norm(l))

    @property
    def mean(self) -> torch.Tensor:
        return continuous_bernoulli_mean(self.logits).clamp(0.0, 1.0)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        with torch.no_grad():
            return torch.distributions.ContinuousBernoulli(logits=self.logits).sample(sample_shape).clamp(0.0, 1.0)


@register_likelihood("continuous-bernoulli", discrete=False, data="grey", title="continuous Bernoulli",
                     help="a density on grey levels in [0, 1]")
class ContinuousBernoulliHead(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    @classmethod
    def from_config(cls, config: ModelConfig) -> "ContinuousBernoulliHead":
        return cls(config.channels)

    @property
    def param_channels(self) -> int:
        return self.channels

    def forward(self, params: torch.Tensor) -> ContinuousBernoulliImage:
        return ContinuousBernoulliImage(params, validate_args=False)


# --- Gaussian with a learned variance -----------------------------------------------------

# A standard deviation below one grey level (1/255) claims more precision than 8-bit data
# has; without a floor, pixels that are always 0 (the background) drive the variance to 0
# and the log-density to +infinity.
GAUSSIAN_LOGVAR_MIN = 2 * math.log(1 / 255)
GAUSSIAN_LOGVAR_START = 2 * math.log(0.1)  # a broad start, so early reconstructions are not punished for being blurry


def soft_floor(raw: torch.Tensor, floor: float) -> torch.Tensor:
    """floor + softplus(raw - floor): above `floor` always, and unlike a clamp it keeps a
    gradient below it, so a parameter that went under can come back."""
    return floor + F.softplus(raw - floor)


def soft_floor_inverse(value: float, floor: float) -> float:
    """The raw parameter that soft_floor maps to `value` (> floor)."""
    excess = value - floor
    return floor + excess + math.log(-math.expm1(-excess))


class GaussianImage(ImageDistribution):
    """Independent Gaussian pixels: mean = sigmoid(logits) (*batch, C, H, W), log-variance
    broadcastable to it ((C, H, W) per pixel or () global)."""

    arg_constraints = {"logits": constraints.real, "logvar": constraints.real}
    support = constraints.independent(constraints.real, 3)

    def __init__(self, logits: torch.Tensor, logvar: torch.Tensor, validate_args: bool | None = None) -> None:
        self.logits, self.logvar = logits, logvar
        super().__init__(logits, validate_args)

    @property
    def loc(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def scale(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return _sum_pixels(-0.5 * ((self._checked(x) - self.loc).pow(2) * torch.exp(-self.logvar) + self.logvar + _LOG_2PI))

    @property
    def mean(self) -> torch.Tensor:
        return self.loc  # a sigmoid: already in [0, 1]

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        """A draw, clamped to the [0, 1] an image can show."""
        with torch.no_grad():
            noise = torch.randn_like(self.loc.expand(self._sample_shape(sample_shape)))
            return (self.loc + self.scale * noise).clamp(0.0, 1.0)


@register_likelihood("gaussian", discrete=False, data="grey", uses=("gaussian_variance",), title="Gaussian",
                     help="a density on grey levels with a learned variance")
class GaussianHead(nn.Module):
    """The decoder gives the mean (through a sigmoid, so it stays in the data's range without
    clamping); the log-variance is a parameter of this module, per pixel or one global value,
    not a decoder output, so it cannot collapse example by example."""

    def __init__(self, channels: int, size: int, variance: str = "pixel") -> None:
        super().__init__()
        if variance not in ("pixel", "global"):
            raise ValueError(f"gaussian variance must be 'pixel' or 'global', got {variance!r}")
        self.channels = channels
        shape = (channels, size, size) if variance == "pixel" else ()
        self.logvar = nn.Parameter(torch.full(shape, soft_floor_inverse(GAUSSIAN_LOGVAR_START, GAUSSIAN_LOGVAR_MIN)))

    @classmethod
    def from_config(cls, config: ModelConfig) -> "GaussianHead":
        return cls(config.channels, config.image_size, config.gaussian_variance)

    @property
    def param_channels(self) -> int:
        return self.channels

    def forward(self, params: torch.Tensor) -> GaussianImage:
        return GaussianImage(params, soft_floor(self.logvar, GAUSSIAN_LOGVAR_MIN), validate_args=False)


# --- Discretised logistic mixture (Salimans et al. 2017, PixelCNN++) -----------------------

# PixelCNN++'s floor, e^-7 in its [-1, 1] units, which is e^-7 / 2 in our [0, 1] units. A
# logistic of scale s centred on an interior grey level puts sigmoid(h/s) - sigmoid(-h/s) =
# tanh(h / 2s) on its bin (half-width h = 1/510): tanh(2.15) = 0.973 at this floor, whereas
# e^-7 in [0, 1] units gave tanh(1.075) = 0.79 and so capped a confident model's pixel there.
LOGISTIC_LOG_SCALE_MIN = -7.0 - math.log(2)


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - e^d) for d <= 0 (Maechler's split keeps both ends accurate)."""
    return torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def log_sigmoid_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(a) - sigmoid(b)) for a > b, accurate when both are near 0 or near 1.

    sigmoid(a) - sigmoid(b) = sigmoid(-b) - sigmoid(-a); we take the side where both terms are
    small (the bin's centre at or below the distribution's), so no 1 - 1 cancellation occurs.
    """
    flip = (a + b) > 0
    hi = torch.where(flip, -b, a)
    lo = torch.where(flip, -a, b)
    log_hi, log_lo = F.logsigmoid(hi), F.logsigmoid(lo)
    return log_hi + _log1mexp((log_lo - log_hi).clamp(max=-1e-12))


class DiscretisedLogisticMixtureImage(ImageDistribution):
    """Each pixel and channel: a mixture of L logistics, discretised to the 256 grey levels.

    logits, loc, log_scale: (*batch, L, C, H, W). Level x (a multiple of 1/255) gets the
    logistic mass of [x - 1/510, x + 1/510]; level 0 gets everything below 1/510 and level 255
    everything above 1 - 1/510, so the 256 probabilities sum to exactly 1.
    """

    arg_constraints = {"logits": constraints.real, "loc": constraints.real, "log_scale": constraints.real}
    support = constraints.independent(constraints.unit_interval, 3)
    half_bin = 0.5 / (LEVELS - 1)

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, validate_args: bool | None = None) -> None:
        if not logits.shape == loc.shape == log_scale.shape or logits.dim() < 4:
            raise ValueError(f"logits {tuple(logits.shape)}, loc {tuple(loc.shape)} and log_scale {tuple(log_scale.shape)} "
                             "must all be (*batch, L, C, H, W)")
        self.logits, self.loc, self.log_scale = logits, loc, log_scale
        super().__init__(loc.select(-4, 0), validate_args)

    def level_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log P(x) per pixel: x (*batch, C, H, W) on the 1/255 grid -> (*batch, C, H, W)."""
        x = x.unsqueeze(-4)  # (..., 1, C, H, W) against L components
        inv_scale = torch.exp(-self.log_scale)
        upper = inv_scale * (x - self.loc + self.half_bin)  # standardised bin edges
        lower = inv_scale * (x - self.loc - self.half_bin)
        bottom = F.logsigmoid(upper)  # level 0: P(X < 1/510)
        top = F.logsigmoid(-lower)  # level 255: P(X > 1 - 1/510)
        middle = log_sigmoid_difference(upper, lower)
        log_p = torch.where(x < self.half_bin, bottom, torch.where(x > 1 - self.half_bin, top, middle))
        return torch.logsumexp(torch.log_softmax(self.logits, -4) + log_p, -4)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return _sum_pixels(self.level_log_prob(self._checked(x)))

    @property
    def mean(self) -> torch.Tensor:
        """The mixture's mean, clamped to [0, 1] (where the edge levels collect the tails)."""
        return (torch.softmax(self.logits, -4) * self.loc).sum(-4).clamp(0.0, 1.0)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        """A grey level per pixel: a component, a logistic draw, rounded to the 1/255 grid."""
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.logits.shape
            probs = torch.softmax(self.logits, -4).expand(shape).movedim(-4, -1)  # (..., C, H, W, L)
            index = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).view(*probs.shape[:-1], 1)

            def pick(t: torch.Tensor) -> torch.Tensor:  # the chosen component's value per pixel
                return t.expand(shape).movedim(-4, -1).gather(-1, index).squeeze(-1)

            loc = pick(self.loc)
            u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
            x = loc + pick(self.log_scale).exp() * (torch.log(u) - torch.log1p(-u))  # logistic inverse CDF
            return torch.round(x.clamp(0.0, 1.0) * (LEVELS - 1)) / (LEVELS - 1)


@register_likelihood("logistic", discrete=True, data="grey", uses=("logistic_mixtures",), title="discretised logistic",
                     help="a mixture of logistics discretised to the 256 grey levels")
class DiscretisedLogisticHead(nn.Module):
    """3 * L parameters per channel: mixture logits, locations (in [0, 1] units) and log-scales.

    Channels are independent given z (PixelCNN++'s autoregressive colour coefficients belong
    to autoregressive decoders, not to a factorised one).
    """

    def __init__(self, channels: int, mixtures: int = 1) -> None:
        super().__init__()
        if mixtures < 1:
            raise ValueError(f"logistic mixtures must be positive, got {mixtures}")
        self.channels, self.mixtures = channels, mixtures

    @classmethod
    def from_config(cls, config: ModelConfig) -> "DiscretisedLogisticHead":
        return cls(config.channels, config.logistic_mixtures)

    @property
    def param_channels(self) -> int:
        return 3 * self.mixtures * self.channels

    def forward(self, params: torch.Tensor) -> DiscretisedLogisticMixtureImage:
        *batch, _, h, w = params.shape
        p = params.reshape(*batch, 3, self.mixtures, self.channels, h, w)  # (..., 3, L, C, H, W)
        logits, loc, log_scale = p.unbind(-5)
        # Locations start at 0.5 (the middle of the range) rather than at 0, the bottom edge.
        return DiscretisedLogisticMixtureImage(logits, loc + 0.5, log_scale.clamp(min=LOGISTIC_LOG_SCALE_MIN), validate_args=False)


def make_likelihood(config: ModelConfig) -> nn.Module:
    """The head registered under config.likelihood, built from `config` (image_size is the data's cropped size)."""
    return likelihood_spec(config.likelihood).cls.from_config(config)
