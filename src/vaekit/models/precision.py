"""The networks' arithmetic: bf16 autocast around the encoder and decoder, fp32 everywhere else.

- `autocast_networks`: the encoder and decoder run under bf16 autocast (on a CPU or a GPU) and
  hand fp32 to the distributions (training in bf16: `--precision bf16`, or `auto` on a CPU with
  bf16 units); `full_precision` takes that off for a block (validation, evaluation).

The bounds, the distributions, the optimizer state and the master weights stay fp32.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch
from torch import nn

from vaekit.models.fast_modules import twin

NETWORKS = ("encoder", "decoder")


class AutocastNetwork(nn.Module):
    """Mixed into a network's own class by `autocast_networks`: its forward under bf16 autocast
    its outputs back in fp32, so the distributions and bounds never see bf16."""

    plain_class: type[nn.Module]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The network's own forward under bf16 autocast, its tensor outputs returned in fp32."""
        with network_autocast(x.device):
            out = super().forward(x, *args, **kwargs)
        return to_full_precision(*out) if isinstance(out, (tuple, list)) else to_full_precision(out)[0]


_AUTOCAST_CLASSES: dict[type, type] = {}


def autocast_class(cls: type[nn.Module]) -> type[nn.Module]:
    """The autocast subclass of `cls` (`AutocastNetwork` mixed in), made once per class and reused."""
    if cls not in _AUTOCAST_CLASSES:
        _AUTOCAST_CLASSES[cls] = type(f"Autocast{cls.__name__}", (AutocastNetwork, cls), {"plain_class": cls})
    return _AUTOCAST_CLASSES[cls]


def autocast_networks(model: nn.Module) -> nn.Module:
    """Runs model.encoder and model.decoder (any nn.Module, a user's too) under bf16 autocast on
    CUDA from now on, in place; a no-op on other devices. Returns `model`."""
    for name in NETWORKS:
        network = getattr(model, name)
        if not isinstance(network, AutocastNetwork):
            setattr(model, name, twin(network, autocast_class(type(network))))
    return model


def plain_type(network: nn.Module) -> type:
    """The network's class without the autocast wrapper: `type(network)` for a plain one."""
    return network.plain_class if isinstance(network, AutocastNetwork) else type(network)


def without_autocast(network: nn.Module) -> nn.Module:
    """The network without autocast: a plain twin sharing its parameters, or `network` itself if plain."""
    return twin(network, network.plain_class) if isinstance(network, AutocastNetwork) else network


@contextmanager
def full_precision(model: nn.Module) -> Iterator[nn.Module]:
    """fp32 networks inside the block, autocast as it was after it: validation picks the best
    checkpoint and evaluation reports its numbers on the same fp32 model on every device,
    whatever training ran in (bf16 on a GPU with --precision bf16)."""
    swapped = [name for name in NETWORKS if isinstance(getattr(model, name, None), AutocastNetwork)]
    for name in swapped:
        setattr(model, name, without_autocast(getattr(model, name)))
    try:
        yield model
    finally:
        for name in swapped:
            network = getattr(model, name)
            setattr(model, name, twin(network, autocast_class(type(network))))


def network_autocast(device: torch.device, enabled: bool = True) -> Any:
    """bf16 autocast around the networks on a CPU or a CUDA GPU; the bounds are computed in fp32
    by the caller. Other devices run as they are."""
    if enabled and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def to_full_precision(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """bf16/fp16 outputs of an autocast region back to fp32; fp32 and fp64 pass through untouched."""
    return tuple(t.float() if t.dtype in (torch.bfloat16, torch.float16) else t for t in tensors)
