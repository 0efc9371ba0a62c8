"""Models: the conv networks (plain or gated blocks), the `VAE` that turns them into
distributions, and the speed paths (fast twins, BatchNorm folding, bf16 autocast) that change
nothing beyond float rounding."""

from vaekit.models.vae import VAE, decoder_channels

__all__ = ["VAE", "decoder_channels"]
