"""The notebook's convolutional encoder and decoder, sized by the input.

Each stride-2 block halves the image; the encoder stops at 2x2 and a 2x2 convolution makes
the heads, so a 32-pixel input has the notebook's four blocks (32-64-128-256) and a
64-pixel input gets one more block in front instead of a new class. `width` scales every block
(the widest has `width` channels; 256 is the notebook's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import block_widths


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


class MatmulConvTranspose2d(nn.ConvTranspose2d):
    """A ConvTranspose2d computed as one matrix product where it is one: a 1x1 input (the
    latent -> 4x4 grid) or a 1x1 kernel (the decoder head), stride 1, no padding.

    Same parameters and state dict as nn.ConvTranspose2d. On the CPU we measured, oneDNN's
    backward for these shapes ran several times slower than the equivalent GEMM.
    """

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        plain = self.groups == 1 and self.stride == (1, 1) and self.padding == (0, 0) and self.output_padding == (0, 0) and self.dilation == (1, 1)
        one_by_one_input, one_by_one_kernel = x.shape[-2:] == (1, 1), self.kernel_size == (1, 1)
        if output_size is not None or x.dim() != 4 or not plain or not (one_by_one_input or one_by_one_kernel):
            return super().forward(x, output_size)
        n, (kh, kw) = x.shape[0], self.kernel_size
        c_in, c_out = self.in_channels, self.out_channels
        if one_by_one_input:
            w = self.weight.permute(0, 2, 3, 1).reshape(c_in, kh * kw * c_out)  # (C_in, kh*kw*C_out)
            out = (x.reshape(n, c_in) @ w).view(n, kh, kw, c_out)  # (N, kh, kw, C_out)
        else:
            out = x.permute(0, 2, 3, 1) @ self.weight.reshape(c_in, c_out)  # (N, H, W, C_out)
        if self.bias is not None:
            out = out + self.bias
        out = out.permute(0, 3, 1, 2)  # (N, C_out, H, W), channels_last strides
        # Keep the layout the model was put in: channels_last in, channels_last out; NCHW stays NCHW.
        return out if _is_channels_last(self.weight) or _is_channels_last(x) else out.contiguous()


def _is_channels_last(t: torch.Tensor) -> bool:
    """Strictly channels_last (a tensor with 1x1 spatial size or one channel is both layouts)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _up(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    conv = MatmulConvTranspose2d if (stride, padding) == (1, 0) else nn.ConvTranspose2d
    return nn.Sequential(
        conv(c_in, c_out, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


class ConvEncoder(nn.Module):
    """x (B, C, S, S) -> means and log-variances (B, K, D), mixture logits (B, K)."""

    def __init__(self, channels: int, size: int, latent_size: int, components: int, width: int = 256) -> None:
        super().__init__()
        widths = block_widths(size, width)
        self.latent_size, self.components = latent_size, components
        self.body = nn.Sequential(*[_down(c_in, c_out) for c_in, c_out in zip([channels] + widths, widths)])
        # Three 2x2 heads as in the notebook; the weight head is sized by K alone (the
        # notebook reshaped it with latent_size).
        self.loc_head = nn.Conv2d(widths[-1], components * latent_size, 2)
        self.logvar_head = nn.Conv2d(widths[-1], components * latent_size, 2)
        self.logits_head = nn.Conv2d(widths[-1], components, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (B, width, 2, 2)
        # A 2x2 kernel on a 2x2 input is a matrix product: the three heads run as one GEMM
        # (same parameters; oneDNN's backward for this shape was several times slower).
        heads = (self.loc_head, self.logvar_head, self.logits_head)
        weight = torch.cat([head.weight.flatten(1) for head in heads])  # (2KD + K, 256*2*2)
        bias = torch.cat([head.bias for head in heads])
        out = F.linear(h.flatten(1), weight, bias)  # (B, 2KD + K)
        kd = self.components * self.latent_size
        shape = (x.shape[0], self.components, self.latent_size)
        loc = out[:, :kd].reshape(shape)  # (B, K, D)
        logvar = out[:, kd:2 * kd].reshape(shape)  # (B, K, D)
        logits = out[:, 2 * kd:]  # (B, K)
        return loc, logvar, logits


class ConvDecoder(nn.Module):
    """z (N, D) -> per-pixel distribution parameters (N, out_channels, S, S)."""

    def __init__(self, out_channels: int, size: int, latent_size: int, width: int = 256) -> None:
        super().__init__()
        widths = block_widths(size, width)[::-1]  # the widest first
        layers = [_up(latent_size, widths[0], 4, 1, 0)]  # 1x1 -> 4x4
        layers += [_up(c_in, c_out, 4, 2, 1) for c_in, c_out in zip(widths[:-1], widths[1:])]
        self.body = nn.Sequential(*layers)
        # Logits, not probabilities: the sigmoid lives in the likelihood, where BCE is stable.
        self.head = MatmulConvTranspose2d(widths[-1], out_channels, 1, 1, 0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z[:, :, None, None]))  # (N, D) -> (N, D, 1, 1) -> (N, C', S, S)
