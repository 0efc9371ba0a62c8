"""Distributions: the mixture-of-Gaussians posterior, the priors, the image likelihoods, and the
closed-form KL table. Each is a `torch.distributions.Distribution` (`rsample`, `log_prob`), and a
likelihood or prior class is registered by name where it is defined."""

from vaekit.config.registry import register_likelihood, register_prior
from vaekit.distributions.kl import register_closed_form_kl
from vaekit.distributions.likelihoods import ImageDistribution
from vaekit.distributions.mixture import MixtureOfGaussians

__all__ = [
    "MixtureOfGaussians",
    "ImageDistribution",
    "register_likelihood",
    "register_prior",
    "register_closed_form_kl",
]
