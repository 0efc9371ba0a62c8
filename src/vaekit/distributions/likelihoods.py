"""Likelihoods p(x|z) over whole images: `log_prob` sums over channels and pixels.

The decoder emits raw parameters (`param_channels` per pixel); each head module turns them into
a `torch.distributions.Distribution` over images (event_shape (C, H, W)), so sigmoids and the
like are applied only where they are needed. Every one has `log_prob(x)` (x broadcasts over
leading batch dims), `.mean` (images in [0, 1] for display) and `sample()`.

The discretised logistic mixture lives in discretised_logistic.py. Each head is registered
(registry.register_likelihood) with what it models: "binary" or "grey" data, and whether
`log_prob` is a log probability (a true NLL, reportable in bits/dim) rather than a log density,
whose value depends on the units of x. Heads make their distributions with validate_args=False:
a NaN from the networks is the training loop's to report.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, constraints

from vaekit.config import ModelConfig
from vaekit.config.registry import likelihood as likelihood_spec
from vaekit.config.registry import register_likelihood
from vaekit.distributions.mixture import LOG_2PI

LEVELS = 256  # 8-bit data: x in {0, 1/255, ..., 1}


def sum_pixels(t: torch.Tensor) -> torch.Tensor:
    """Per-pixel terms (..., C, H, W) summed over each image: (...)."""
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

    def _sample_shape(self, sample_shape: torch.Size | list[int] | tuple[int, ...]) -> torch.Size:
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
        """log p(x) summed over each image's pixels: (*batch) for x (*batch, C, H, W), leading dims broadcast."""
        # x * l - softplus(l) is -BCE-with-logits, written so x broadcasts over extra batch dims.
        return sum_pixels(self._checked(x) * self.logits - F.softplus(self.logits))

    @property
    def mean(self) -> torch.Tensor:
        """The pixel probabilities sigmoid(logits), images in [0, 1]."""
        return torch.sigmoid(self.logits)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """Binary images drawn pixel by pixel, (*sample_shape, *batch, C, H, W); no gradient."""
        with torch.no_grad():
            return torch.bernoulli(self.mean.expand(self._sample_shape(sample_shape)))


@register_likelihood("bernoulli", discrete=True, data="binary", title="Bernoulli", help="pixels in {0, 1}; the default")
class BernoulliHead(nn.Module):
    """The "bernoulli" likelihood: the decoder's `channels` logits per pixel as a `BernoulliImage`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    @classmethod
    def from_config(cls, config: ModelConfig) -> "BernoulliHead":
        """The head for `config`'s number of channels."""
        return cls(config.channels)

    @property
    def param_channels(self) -> int:
        """Decoder output channels this head needs: one logit per image channel."""
        return self.channels

    def forward(self, params: torch.Tensor) -> BernoulliImage:
        """The `BernoulliImage` with the decoder's output `params` (*batch, C, H, W) as logits."""
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
        """log p(x), the normalising constant included, summed over each image's pixels: (*batch)."""
        logits = self.logits
        return sum_pixels(self._checked(x) * logits - F.softplus(logits) + continuous_bernoulli_log_norm(logits))

    @property
    def mean(self) -> torch.Tensor:
        """The distribution's mean per pixel (not lambda = sigmoid(logits)), in [0, 1]."""
        return continuous_bernoulli_mean(self.logits).clamp(0.0, 1.0)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """Grey-level images drawn pixel by pixel, clamped to [0, 1]; no gradient."""
        with torch.no_grad():
            return torch.distributions.ContinuousBernoulli(logits=self.logits).sample(sample_shape).clamp(0.0, 1.0)


@register_likelihood(
    "continuous-bernoulli",
    discrete=False,
    data="grey",
    title="continuous Bernoulli",
    help="a density on grey levels in [0, 1]",
)
class ContinuousBernoulliHead(nn.Module):
    """The "continuous-bernoulli" likelihood: the decoder's logits as a `ContinuousBernoulliImage`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    @classmethod
    def from_config(cls, config: ModelConfig) -> "ContinuousBernoulliHead":
        """The head for `config`'s number of channels."""
        return cls(config.channels)

    @property
    def param_channels(self) -> int:
        """Decoder output channels this head needs: one logit per image channel."""
        return self.channels

    def forward(self, params: torch.Tensor) -> ContinuousBernoulliImage:
        """The `ContinuousBernoulliImage` with the decoder's output `params` as logits."""
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
        """The Gaussians' means, sigmoid(logits), in [0, 1]."""
        return torch.sigmoid(self.logits)

    @property
    def scale(self) -> torch.Tensor:
        """The standard deviations exp(logvar / 2), broadcastable to the means."""
        return torch.exp(0.5 * self.logvar)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The Gaussian log-density of x summed over each image's pixels: (*batch)."""
        return sum_pixels(
            -0.5 * ((self._checked(x) - self.loc).pow(2) * torch.exp(-self.logvar) + self.logvar + LOG_2PI)
        )

    @property
    def mean(self) -> torch.Tensor:
        """The means `loc`, images in [0, 1]."""
        return self.loc  # a sigmoid: already in [0, 1]

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """A draw, clamped to the [0, 1] an image can show."""
        with torch.no_grad():
            noise = torch.randn_like(self.loc.expand(self._sample_shape(sample_shape)))
            return (self.loc + self.scale * noise).clamp(0.0, 1.0)


@register_likelihood(
    "gaussian",
    discrete=False,
    data="grey",
    title="Gaussian",
    help="a density on grey levels with a learned variance",
)
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
        """The head for `config`'s channels, image size and `gaussian_variance` ("pixel" or "global")."""
        return cls(config.channels, config.image_size, config.gaussian_variance)

    @property
    def param_channels(self) -> int:
        """Decoder output channels this head needs: one mean logit per image channel."""
        return self.channels

    def forward(self, params: torch.Tensor) -> GaussianImage:
        """The `GaussianImage` with `params` as mean logits and this head's soft-floored log-variance."""
        return GaussianImage(params, soft_floor(self.logvar, GAUSSIAN_LOGVAR_MIN), validate_args=False)


def make_likelihood(config: ModelConfig) -> Any:
    """The head registered under config.likelihood, built from `config` (image_size is the data's cropped size)."""
    return likelihood_spec(config.likelihood).cls.from_config(config)
