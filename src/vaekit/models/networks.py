"""The notebook's convolutional encoder and decoder, sized by the input.

Each stride-2 block halves the image; the encoder stops at 2x2 and a 2x2 convolution makes
the heads, so a 32-pixel input has the notebook's four blocks (32-64-128-256) and a
64-pixel input gets one more block in front instead of a new class. `width` scales every block
(the widest has `width` channels; 256 is the notebook's).

Plain PyTorch modules only: speed.fast_networks swaps in faster twins where training and
evaluation ask for speed.
"""

from __future__ import annotations

import torch
from torch import nn

from vaekit.config import block_widths


def is_channels_last(t: torch.Tensor) -> bool:
    """Strictly channels_last (a tensor with 1x1 spatial size or one channel is both layouts)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class Gate(nn.Module):
    """a * sigmoid(b) over the two halves of the channels. nn.GLU computes the same, but its
    backward hands BatchNorm a gradient in another memory layout: 3.6x slower on channels_last."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """a * sigmoid(b), where a and b are the first and second halves of h's channels."""
        a, b = h.chunk(2, dim=1)
        if is_channels_last(h):
            # Half the channels of a channels_last tensor is strided memory, where the CPU's
            # sigmoid takes a slow elementwise path (4.3 ms against ~1 ms on 128x12x32x32):
            # one copy first is cheaper.
            b = b.contiguous(memory_format=torch.channels_last)
        return a * torch.sigmoid(b)


def conv_block(conv: type[nn.Module], c_in: int, c_out: int, blocks: str, *conv_args: int) -> nn.Sequential:
    """conv(c_in -> c_out, *conv_args) -> BatchNorm -> the kind's activation; `c_out` channels out.

    plain: LeakyReLU(0.2), the notebook's. gated: the conv makes twice the channels and half of
    them gate the other half, a * sigmoid(b) (Dauphin et al. 2017), the gated convolutions of
    Tomczak & Welling's VampPrior networks; at the same width a layer costs twice the FLOPs.
    """
    if blocks == "gated":
        return nn.Sequential(conv(c_in, 2 * c_out, *conv_args, bias=False), nn.BatchNorm2d(2 * c_out), Gate())
    return nn.Sequential(
        conv(c_in, c_out, *conv_args, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)
    )


def down_block(c_in: int, c_out: int, blocks: str = "plain") -> nn.Sequential:
    """A `conv_block` whose 4x4 stride-2 convolution halves the image."""
    return conv_block(nn.Conv2d, c_in, c_out, blocks, 4, 2, 1)


def up_block(c_in: int, c_out: int, kernel: int, stride: int, padding: int, blocks: str = "plain") -> nn.Sequential:
    """A `conv_block` around a transposed convolution (kernel 4, stride 2, padding 1 doubles the image)."""
    return conv_block(nn.ConvTranspose2d, c_in, c_out, blocks, kernel, stride, padding)


class ConvEncoder(nn.Module):
    """x (B, C, S, S) -> means and log-variances (B, K, D), mixture logits (B, K)."""

    def __init__(
        self, channels: int, size: int, latent_size: int, components: int, width: int = 256, blocks: str = "plain"
    ) -> None:
        super().__init__()
        widths = block_widths(size, width)
        self.latent_size, self.components = latent_size, components
        self.body = nn.Sequential(
            *[down_block(c_in, c_out, blocks) for c_in, c_out in zip([channels] + widths, widths)]
        )
        # Three 2x2 heads as in the notebook; the weight head is sized by K alone (the
        # notebook reshaped it with latent_size).
        self.loc_head = nn.Conv2d(widths[-1], components * latent_size, 2)
        self.logvar_head = nn.Conv2d(widths[-1], components * latent_size, 2)
        self.logits_head = nn.Conv2d(widths[-1], components, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The posterior's parameters for images x (B, C, S, S): means and log-variances (B, K, D) and
        mixture logits (B, K).
        """
        h = self.body(x)  # (B, width, 2, 2)
        shape = (x.shape[0], self.components, self.latent_size)
        loc = self.loc_head(h).reshape(shape)  # (B, KD, 1, 1) -> (B, K, D)
        logvar = self.logvar_head(h).reshape(shape)  # (B, K, D)
        logits = self.logits_head(h).reshape(shape[:2])  # (B, K)
        return loc, logvar, logits


class ConvDecoder(nn.Module):
    """z (N, D) -> per-pixel distribution parameters (N, out_channels, S, S)."""

    def __init__(self, out_channels: int, size: int, latent_size: int, width: int = 256, blocks: str = "plain") -> None:
        super().__init__()
        widths = block_widths(size, width)[::-1]  # the widest first
        layers = [up_block(latent_size, widths[0], 4, 1, 0, blocks)]  # 1x1 -> 4x4
        layers += [up_block(c_in, c_out, 4, 2, 1, blocks) for c_in, c_out in zip(widths[:-1], widths[1:])]
        self.body = nn.Sequential(*layers)
        # Logits, not probabilities: the sigmoid lives in the likelihood, where BCE is stable.
        self.head = nn.ConvTranspose2d(widths[-1], out_channels, 1, 1, 0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's raw parameters (N, out_channels, S, S) for latents z (N, D), logits rather than
        probabilities.
        """
        return self.head(self.body(z[:, :, None, None]))  # (N, D) -> (N, D, 1, 1) -> (N, C', S, S)
