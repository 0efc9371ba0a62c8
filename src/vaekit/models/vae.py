"""The VAE: an encoder that returns q(z|x), a decoder that returns p(x|z), and a prior p(z).

No training code lives here; objectives.py turns these distributions into bounds.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vaekit.config import ModelConfig
from vaekit.distributions.likelihoods import make_likelihood
from vaekit.distributions.mixture import MixtureOfGaussians
from vaekit.distributions.priors import make_prior
from vaekit.errors import VaekitError
from vaekit.models.ladder import BottomUp, TopDown
from vaekit.models.networks import ConvDecoder, ConvEncoder
from vaekit.objectives.bounds import elbo_terms, iwae_terms, pathwise_terms
from vaekit.objectives.hierarchical import hierarchical_terms


class VAE(nn.Module):
    """q(z|x), p(x|z) and p(z) for images of `config`'s size.

    `encoder` and `decoder` default to the built-in ConvEncoder and ConvDecoder. Any nn.Module
    can take their place if it honours this contract (S = config.padded_size, B the batch,
    K = config.components, D = config.latent_size, C = config.channels):

    - encoder: images (B, C, S, S) in [0, 1], exactly as given (flattening is the module's own
      business) -> (loc, logvar, logits) with shapes (B, K, D), (B, K, D), (B, K): the means,
      log-variances and mixture logits of q(z|x).
    - decoder: latents (N, D) -> likelihood parameters (N, C', S, S) with
      C' = decoder_channels(config) (model.likelihood.param_channels); the VAE crops the zero
      frame around 28-pixel data itself.

    Lazy layers (`nn.LazyLinear`, ...) are sized here by one call on a zero batch. The shapes a
    user's network returns are checked on its first call. Their class names are
    recorded in the config (custom_encoder, custom_decoder), so `vaekit.load_run` of such a run
    needs the modules again: load_run(path, encoder=..., decoder=...). The speed paths
    measured for the conv networks (channels_last, speed.fast_networks) are not applied to a
    user's networks.

    With config.levels L >= 2 the networks are the hierarchy's (models/ladder.py): the encoder
    is the bottom-up pass, returning the top group's (loc, logvar, logits) followed by its
    activations at the lower groups' resolutions (the `context`), and the decoder the top-down
    pass, which draws the lower groups. `encode` is then q(z_L | x), the top group's posterior,
    and the bounds go through `encode_with_context` and `decode_groups`. A user's own networks
    are single-level only.

    The model as built is plain PyTorch; speed.py swaps in faster modules where training and
    evaluation ask for them, and bf16 autocast around the networks if asked.
    """

    def __init__(self, config: ModelConfig, encoder: nn.Module | None = None, decoder: nn.Module | None = None) -> None:
        super().__init__()
        config.validate()
        check_networks_given(config, encoder, decoder)
        if config.levels > 1 and (encoder is not None or decoder is not None):
            raise VaekitError(
                f"your own networks make a single-level VAE; --levels {config.levels} needs the built-in ones"
            )
        if encoder is not None or decoder is not None:
            # A copy, so the caller's config is not edited behind its back.
            config = dataclasses.replace(
                config, custom_encoder=_class_name(encoder), custom_decoder=_class_name(decoder)
            )
        self.config = config
        size = config.padded_size
        self.border = (size - config.image_size) // 2  # 28-pixel data sits inside a 32-pixel frame
        # True where the decoder itself returns only the data's pixels (speed.crop_in_decoder).
        self.decoder_crops = False
        # The built-in networks are made in this order (encoder, likelihood, decoder, prior), so a
        # seed gives the same weights as before user networks existed.
        self.encoder: nn.Module
        self.decoder: nn.Module
        if config.levels > 1:
            self.encoder = BottomUp(config)
        elif encoder is not None:
            self.encoder = encoder
        else:
            self.encoder = ConvEncoder(
                config.channels, size, config.latent_size, config.components, config.width, config.blocks
            )
        self.likelihood = make_likelihood(config)
        if config.levels > 1:
            self.decoder = TopDown(config, self.likelihood.param_channels)
        elif decoder is not None:
            self.decoder = decoder
        else:
            self.decoder = ConvDecoder(
                self.likelihood.param_channels, size, config.latent_size, config.width, config.blocks
            )
        self.prior_net = make_prior(config)  # a VampPrior's pseudo-inputs get the data's zero frame
        # A user's network's output shapes are checked once, on its first call: a wrong shape
        # would otherwise surface as a broadcasting error deep inside the bounds.
        self._unchecked = {"encoder": encoder is not None, "decoder": decoder is not None}
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in self.parameters()):
            self._size_lazy_layers()

    def _size_lazy_layers(self) -> None:
        """Lazy layers (nn.LazyLinear and kin) take their sizes from a first call: it happens here,
        on a zero batch in eval mode without gradients, so BatchNorm statistics stay untouched and
        every later path (moving to a device, channels_last, the optimizer, loading) sees real tensors."""
        modes = {m: m.training for m in self.modules()}
        self.eval()
        try:
            with torch.no_grad():
                c, s = self.config.channels, self.config.padded_size
                self.encode(torch.zeros(2, c, s, s))
                self.decode(torch.zeros(2, self.config.latent_size))
        finally:
            for module, training in modes.items():
                module.training = training

    @property
    def custom_networks(self) -> bool:
        """Whether either network is a user's own (not the built-in conv networks)."""
        return self.config.custom_networks

    @property
    def levels(self) -> int:
        """L, the number of latent groups (1: a single-level VAE)."""
        return self.config.levels

    def encode(self, x: torch.Tensor) -> MixtureOfGaussians:
        """q(z|x) for images x (B, C, S, S) in [0, 1]; with levels >= 2, q(z_L|x) of the top group."""
        return self.encode_with_context(x)[0]

    def encode_with_context(self, x: torch.Tensor) -> tuple[MixtureOfGaussians, list[torch.Tensor]]:
        """q(z|x) (the top group's with levels >= 2) and the bottom-up activations the lower
        groups' posteriors need (an empty list for a single-level VAE)."""
        out = self.encoder(x)
        if self._unchecked["encoder"]:
            self._check_encoder_output(x, out)
        loc, logvar, logits, *context = out
        if self.config.mixture_weights == "equal":
            logits = torch.zeros_like(logits)  # the weight head's output is not used
        logvar = logvar.clamp(self.config.logvar_min, self.config.logvar_max)
        q = MixtureOfGaussians.from_logvar(loc, logvar, logits, validate_args=False)  # a NaN is the loop's to report
        return q, context

    def decode_groups(
        self,
        z: torch.Tensor,
        context: list[torch.Tensor] | None = None,
        temperature: float = 1.0,
        use_mean: bool = False,
        noise: list[torch.Tensor] | None = None,
    ):
        """For levels >= 2: p(x | z_L, z_<L) for top-group latents z (*batch, D), and the lower
        groups' terms (*batch, L-1, 3): closed-form KL(q || p), log q and log p of each group's
        draw, top-down (models/ladder.py). `context` (from `encode_with_context`, for the
        flattened batch's images in order) draws the lower groups from their posteriors; without
        it they come from their priors at `temperature`. `use_mean` takes each group's mean;
        `noise` (decoder.noise(N)) fixes the lower groups' draws; without it they are drawn here,
        outside the decoder, so a compiled decoder (whose random numbers would come from inductor's
        own generator) gives the eager model's draws."""
        flat = z.reshape(-1, z.shape[-1])  # (N, D)
        if noise is None:
            top_down: TopDown = self.decoder  # type: ignore[assignment]  # levels >= 2: always the built-in one
            noise = top_down.noise(flat.shape[0], flat.device, flat.dtype)
        params, terms = self.decoder(flat, *(context or ()), temperature=temperature, use_mean=use_mean, noise=noise)
        if not self.decoder_crops:
            params = self.crop(params)  # (N, C', H, W)
        px = self.likelihood(params.reshape(*z.shape[:-1], *params.shape[1:]))
        return px, terms.reshape(*z.shape[:-1], *terms.shape[1:])

    def decode(self, z: torch.Tensor, temperature: float = 1.0):
        """p(x|z) for latents z (*batch, D), over the data's own pixels (padding cropped). With
        levels >= 2, z is the top group and the lower groups are drawn from their priors at
        `temperature` (see decode_groups); a single-level VAE has no use for it.

        All draws go through the decoder as one batch, so in training its BatchNorm normalises
        over every component and sample together. Decoding each draw on its own (tried: 1.2x
        faster for K=5 on a 2-core CPU) gives each component its own statistics, which the one
        set of running statistics of eval mode cannot reproduce: a K=5 model trained that way
        scored -249 nats in training mode and -331 in eval mode.
        """
        if self.levels > 1:
            return self.decode_groups(z, temperature=temperature)[0]
        params = self.decoder(z.reshape(-1, z.shape[-1]))  # (N, C', S, S)
        if self._unchecked["decoder"]:
            self._check_decoder_output(z, params)
        if not self.decoder_crops:
            params = self.crop(params)  # (N, C', H, W)
        return self.likelihood(params.reshape(*z.shape[:-1], *params.shape[1:]))

    def prior(self):
        """p(z): a distribution with log_prob and sample."""
        return self.prior_net(self.encode)

    def _check_encoder_output(self, x: torch.Tensor, out) -> None:
        b, k, d = x.shape[0], self.config.components, self.config.latent_size
        expected = [(b, k, d), (b, k, d), (b, k)]
        got = [_shape(t) for t in out] if isinstance(out, (tuple, list)) else [_shape(out)]
        if got != expected:
            raise VaekitError(
                f"encoder {type(self.encoder).__name__} returned {_shapes(got)}; expected (loc, logvar, logits) with "
                f"shapes {_shapes(expected)}, i.e. (B, K, D), (B, K, D), (B, K) for K={k} components, D={d} latents"
            )
        self._unchecked["encoder"] = False

    def _check_decoder_output(self, z: torch.Tensor, params) -> None:
        size = self.config.padded_size
        expected = (z.numel() // z.shape[-1], self.likelihood.param_channels, size, size)
        if _shape(params) != expected:
            raise VaekitError(
                f"decoder {type(self.decoder).__name__} returned {_shapes([_shape(params)])}; expected "
                f"likelihood parameters "
                f"of shape {expected}, i.e. (N, C', S, S) with C'=model.likelihood.param_channels, S=config.padded_size"
            )
        self._unchecked["decoder"] = False

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Drops the zero frame that padded the data up to the network's size."""
        b = self.border
        return x if b == 0 else x[..., b:-b, b:-b]

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """Mean images (n, C, H, W) of p(x|z) for z drawn from the prior; with levels >= 2 the
        lower groups' priors are scaled by `temperature` (the top group's prior is not)."""
        return self.decode(self.prior().sample((n,)), temperature=temperature).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean images decoded from the posterior mean (of every group, with levels >= 2)."""
        q, context = self.encode_with_context(x)
        if self.levels > 1:
            return self.decode_groups(q.mean, context, use_mean=True)[0].mean
        return self.decode(q.mean).mean

    def forward(
        self,
        x_input: torch.Tensor,
        x_target: torch.Tensor | None = None,
        iw_samples: int = 1,
        estimator: str = "marginal",
    ):
        """The training bound's terms; a forward() so DistributedDataParallel can wrap it.

        estimator (TrainConfig.mixture_estimator) says how the mixture component is handled:
        `marginal` decodes every component (the mixture ELBO, or SIWAE with S > 1),
        `stratified` is SIWAE for any S (S=1 included), `pathwise` decodes one draw per sample
        from the full mixture. With K=1 all three are the same bound. With levels >= 2 the same
        choices apply to the top group (objectives.hierarchical).
        """
        if self.levels > 1:
            return hierarchical_terms(self, x_input, x_target, iw_samples, estimator)
        if estimator == "pathwise" and self.config.components > 1:
            return pathwise_terms(self, x_input, x_target, iw_samples)
        if iw_samples > 1 or (estimator == "stratified" and self.config.components > 1):
            return iwae_terms(self, x_input, x_target, iw_samples)
        return elbo_terms(self, x_input, x_target)


def decoder_channels(config: ModelConfig) -> int:
    """C', the parameters per pixel a decoder must return for config's likelihood (1 for a grey Bernoulli)."""
    return make_likelihood(config).param_channels


def check_networks_given(
    config: ModelConfig,
    encoder: nn.Module | None,
    decoder: nn.Module | None,
    what: str = "this config",
    how: str = "VAE(config, encoder=..., decoder=...)",
) -> None:
    """Refuses to build conv networks where `config` records a user's own (their weights would not fit)."""
    missing = [
        f"{role} {name}"
        for role, name, given in (
            ("encoder", config.custom_encoder, encoder),
            ("decoder", config.custom_decoder, decoder),
        )
        if name is not None and given is None
    ]
    if missing:
        raise VaekitError(
            f"{what} uses its own networks ({', '.join(missing)}), which vaekit cannot rebuild; pass new "
            f"instances of them: {how}"
        )


def _class_name(module: nn.Module | None) -> str | None:
    return None if module is None else type(module).__name__


def _shape(t) -> tuple[int, ...] | str:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _shapes(shapes: list) -> str:
    return ", ".join(str(s) for s in shapes)
