"""Faster twins of the built-in networks' modules: the same parameters and state-dict keys,
a different forward that computes the same function to float rounding.

speed.fast_networks swaps them in; networks.py stays plain PyTorch. On the CPU we measured,
oneDNN's backward for a convolution that is really one matrix product (a 1x1 input, a 1x1
kernel, a 2x2 kernel on a 2x2 input) ran several times slower than the equivalent GEMM.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.models.networks import ConvEncoder, is_channels_last


class MatmulConvTranspose2d(nn.ConvTranspose2d):
    """A ConvTranspose2d computed as one matrix product where it is one: a 1x1 input (the
    latent -> 4x4 grid) or a 1x1 kernel (the decoder head), stride 1, no padding."""

    @staticmethod
    def applies_to(conv: nn.Module) -> bool:
        """Whether `conv` is a plain ConvTranspose2d of a shape this twin can compute as a GEMM."""
        return (
            type(conv) is nn.ConvTranspose2d
            and conv.groups == 1
            and conv.stride == (1, 1)
            and conv.padding == (0, 0)
            and conv.output_padding == (0, 0)
            and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros"
        )

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        """The transposed convolution of x, as a matrix product where `applies_to` allows it (no
        `output_size`), else the ordinary ConvTranspose2d; the output keeps the input's memory layout.
        """
        one_by_one_input, one_by_one_kernel = x.shape[-2:] == (1, 1), self.kernel_size == (1, 1)
        if output_size is not None or x.dim() != 4 or not (one_by_one_input or one_by_one_kernel):
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
        return out if is_channels_last(self.weight) or is_channels_last(x) else out.contiguous()


class FusedHeadsConvEncoder(ConvEncoder):
    """ConvEncoder whose three 2x2 heads on the 2x2 feature map run as one GEMM."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same (loc, logvar, logits) as `ConvEncoder.forward`, the three heads computed as one GEMM."""
        h = self.body(x)  # (B, width, 2, 2)
        heads = (self.loc_head, self.logvar_head, self.logits_head)
        weight = torch.cat([head.weight.flatten(1) for head in heads])  # (2KD + K, width*2*2)
        bias = torch.cat([cast(torch.Tensor, head.bias) for head in heads])  # built with bias=True
        out = F.linear(h.flatten(1), weight, bias)  # (B, 2KD + K)
        kd = self.components * self.latent_size
        shape = (x.shape[0], self.components, self.latent_size)
        loc = out[:, :kd].reshape(shape)  # (B, K, D)
        logvar = out[:, kd : 2 * kd].reshape(shape)  # (B, K, D)
        logits = out[:, 2 * kd :]  # (B, K)
        return loc, logvar, logits


def twin(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A `cls` holding `module`'s own parameters, buffers and children (the same objects, so an
    optimiser built on either keeps working) in the same training mode. `cls` must add no
    state of its own: a subclass of type(module), or the class such a subclass came from.
    Nothing is initialised, so no random numbers are drawn."""
    if not (issubclass(cls, type(module)) or issubclass(type(module), cls)):
        raise TypeError(f"{cls.__name__} is not a twin of {type(module).__name__}")
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    new.__dict__.pop("_compiled_call_impl", None)  # as deepcopy does: module.compile()'s function calls `module`
    for name in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
        object.__setattr__(new, name, type(module.__dict__[name])(module.__dict__[name]))
    return new
