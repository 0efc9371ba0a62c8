"""The VAE: an encoder that returns q(z|x), a decoder that returns p(x|z), and a prior p(z).

No training code lives here; objectives.py turns these distributions into bounds.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .config import ModelConfig
from .distributions import MixtureOfGaussians
from .likelihoods import make_likelihood
from .networks import ConvDecoder, ConvEncoder
from .priors import make_prior
from .speed import network_autocast, to_full_precision


class VAE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        # bf16 autocast for the two networks on CUDA (train.py turns it on there); the
        # distributions and bounds always see fp32.
        self.autocast = False
        size = config.padded_size
        self.border = (size - config.image_size) // 2  # 28-pixel data sits inside a 32-pixel frame
        self.encoder = ConvEncoder(config.channels, size, config.latent_size, config.components, config.width)
        self.likelihood = make_likelihood(
            config.likelihood,
            config.channels,
            config.image_size,
            mixtures=config.logistic_mixtures,
            variance=config.gaussian_variance,
        )
        self.decoder = ConvDecoder(self.likelihood.param_channels, size, config.latent_size, config.width)
        self.prior_net = make_prior(
            config.prior,
            config.latent_size,
            config.components,
            prior_components=config.prior_components,
            channels=config.channels,
            size=size,
            border=self.border,  # VampPrior pseudo-inputs get the data's zero frame
        )

    def encode(self, x: torch.Tensor) -> MixtureOfGaussians:
        """q(z|x) for images x (B, C, S, S) in [0, 1]."""
        with network_autocast(x.device, self.autocast):
            loc, logvar, logits = self.encoder(x)
        loc, logvar, logits = to_full_precision(loc, logvar, logits)
        if self.config.mixture_weights == "equal":
            logits = torch.zeros_like(logits)  # the weight head's output is not used
        logvar = logvar.clamp(self.config.logvar_min, self.config.logvar_max)
        return MixtureOfGaussians.from_logvar(loc, logvar, logits, validate_args=False)  # a NaN is the training loop's to report

    def decode(self, z: torch.Tensor):
        """p(x|z) for latents z (*batch, D), over the data's own pixels (padding cropped).

        All draws go through the decoder as one batch, so in training its BatchNorm normalises
        over every component and sample together. Decoding each draw on its own (tried: 1.2x
        faster for K=5 on a 2-core CPU) gives each component its own statistics, which the one
        set of running statistics of eval mode cannot reproduce: a K=5 model trained that way
        scored -249 nats in training mode and -331 in eval mode.
        """
        with network_autocast(z.device, self.autocast):
            params = self.crop(self.decoder(z.reshape(-1, z.shape[-1])))  # (N, C', H, W)
        params, = to_full_precision(params)
        return self.likelihood(params.reshape(*z.shape[:-1], *params.shape[1:]))

    def prior(self):
        """p(z): a distribution with log_prob and sample."""
        return self.prior_net(self.encode)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Drops the zero frame that padded the data up to the network's size."""
        b = self.border
        return x if b == 0 else x[..., b:-b, b:-b]

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Mean images (n, C, H, W) of p(x|z) for z drawn from the prior."""
        return self.decode(self.prior().sample((n,))).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean images decoded from the posterior mean."""
        return self.decode(self.encode(x).mean).mean

    def forward(self, x_input: torch.Tensor, x_target: torch.Tensor | None = None, iw_samples: int = 1,
                estimator: str = "marginal"):
        """The training bound's terms; a forward() so DistributedDataParallel can wrap it.

        estimator (TrainConfig.mixture_estimator) says how the mixture component is handled:
        `marginal` decodes every component (the mixture ELBO, or SIWAE with S > 1),
        `stratified` is SIWAE for any S (S=1 included), `pathwise` decodes one draw per sample
        from the full mixture. With K=1 all three are the same bound.
        """
        from .objectives import elbo_terms, iwae_terms, pathwise_terms

        if estimator == "pathwise" and self.config.components > 1:
            return pathwise_terms(self, x_input, x_target, iw_samples)
        if iw_samples > 1 or (estimator == "stratified" and self.config.components > 1):
            return iwae_terms(self, x_input, x_target, iw_samples)
        return elbo_terms(self, x_input, x_target)


@contextmanager
def full_precision(model: nn.Module) -> Iterator[nn.Module]:
    """fp32 networks inside the block, autocast as it was after it: validation picks the best
    checkpoint and evaluation reports its numbers on the same fp32 model on every device,
    whatever training ran in (bf16 on a GPU)."""
    previous = getattr(model, "autocast", None)
    if previous is None:  # not a VAE (a test double): nothing to switch
        yield model
        return
    model.autocast = False
    try:
        yield model
    finally:
        model.autocast = previous
