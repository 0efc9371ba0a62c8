"""The discretised logistic mixture likelihood (Salimans et al. 2017, PixelCNN++): a true
probability of 8-bit grey levels, so its NLL has a bits/dim."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from vaekit.config import ModelConfig
from vaekit.config.registry import register_likelihood
from vaekit.distributions.likelihoods import LEVELS, ImageDistribution, sum_pixels

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

    def __init__(
        self, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, validate_args: bool | None = None
    ) -> None:
        if not logits.shape == loc.shape == log_scale.shape or logits.dim() < 4:
            raise ValueError(
                f"logits {tuple(logits.shape)}, loc {tuple(loc.shape)} and log_scale {tuple(log_scale.shape)} "
                "must all be (*batch, L, C, H, W)"
            )
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
        """log P(x) summed over each image's pixels: (*batch) for x (*batch, C, H, W) on the 1/255 grid."""
        return sum_pixels(self.level_log_prob(self._checked(x)))

    @property
    def mean(self) -> torch.Tensor:
        """The mixture's mean, clamped to [0, 1] (where the edge levels collect the tails)."""
        return (torch.softmax(self.logits, -4) * self.loc).sum(-4).clamp(0.0, 1.0)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
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


@register_likelihood(
    "logistic",
    discrete=True,
    data="grey",
    title="discretised logistic",
    help="a mixture of logistics discretised to the 256 grey levels",
)
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
        """The head for `config`'s channels and `logistic_mixtures` components."""
        return cls(config.channels, config.logistic_mixtures)

    @property
    def param_channels(self) -> int:
        """Decoder output channels this head needs: 3 * L per image channel."""
        return 3 * self.mixtures * self.channels

    def forward(self, params: torch.Tensor) -> DiscretisedLogisticMixtureImage:
        """The `DiscretisedLogisticMixtureImage` the decoder's output `params` (*batch, 3*L*C, H, W) describe:
        logits, locations (shifted to start at 0.5) and log-scales (floored).
        """
        *batch, _, h, w = params.shape
        p = params.reshape(*batch, 3, self.mixtures, self.channels, h, w)  # (..., 3, L, C, H, W)
        logits, loc, log_scale = p.unbind(-5)
        # Locations start at 0.5 (the middle of the range) rather than at 0, the bottom edge.
        return DiscretisedLogisticMixtureImage(
            logits, loc + 0.5, log_scale.clamp(min=LOGISTIC_LOG_SCALE_MIN), validate_args=False
        )
