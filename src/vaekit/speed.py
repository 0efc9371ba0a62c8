"""Speed paths that never change the numbers beyond float rounding.

- `fold_batchnorm`: an eval-only copy whose BatchNorm layers are folded into the convolution
  before them (one pass over the weights; each conv then carries a bias instead).
- `inference_model`: the copy evaluation should run: folded, channels_last, optionally compiled.
- `compile_networks`: torch.compile of the encoder and decoder only (the distributions and
  bounds stay eager Python, so they still read like the maths).
- `network_autocast`: bf16 autocast for the networks on CUDA; a no-op elsewhere.
- `set_threads`: intra-op threads for this process.

Each was measured by benchmarks/throughput.py; see benchmarks/README.md for what won.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext

import torch
from torch import nn

from .networks import MatmulConvTranspose2d

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


@torch.no_grad()
def _fold_pair(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    """conv followed by bn (running statistics) as one conv with a bias."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    scale = torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    fused = copy.deepcopy(conv)
    # Conv2d weights are (C_out, C_in, kh, kw); ConvTranspose2d weights are (C_in, C_out/groups, kh, kw).
    if isinstance(conv, nn.ConvTranspose2d):
        if conv.groups != 1:
            raise ValueError("folding a grouped ConvTranspose2d is not supported")
        w_scale = scale.view(1, -1, 1, 1)
    else:
        w_scale = scale.view(-1, 1, 1, 1)
    fused.weight = nn.Parameter(conv.weight * w_scale, requires_grad=False)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    fused.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each `conv -> BatchNorm2d` pair in an nn.Sequential folded
    (those `_foldable` accepts; any other module, a user's network's included, is copied as it is).

    The copy computes what `model.eval()` computes, to float rounding; it cannot be trained
    (there is no BatchNorm left to update). The original is not touched.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if _foldable(conv, bn):
                module._modules[first] = _fold_pair(conv, bn)
                module._modules[second] = nn.Identity()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """A pair _fold_pair computes exactly. Anything else in a user's network (a BatchNorm
    without running statistics, a grouped transposed conv, a subclass that changes forward)
    is left as it is: the copy is then merely slower, never different."""
    return (type(conv) in _CONVS + (MatmulConvTranspose2d,) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and not (isinstance(conv, nn.ConvTranspose2d) and conv.groups != 1))


def compile_networks(model: nn.Module, mode: str | None = None) -> nn.Module:
    """Compiles `model.encoder` and `model.decoder` in place with torch.compile and returns model.

    Shapes are kept static (dynamic=False): evaluation uses one batch size, and a last,
    shorter batch costs one more compilation, paid once.
    """
    model.encoder.compile(mode=mode, dynamic=False)
    model.decoder.compile(mode=mode, dynamic=False)
    return model


def inference_model(model: nn.Module, fold: bool = True, channels_last: bool = True, compile: bool = False, mode: str | None = None) -> nn.Module:
    """The copy to evaluate with: eval mode, BatchNorm folded, channels_last; compiled if asked.

    On CUDA, `compile` with mode="reduce-overhead" uses CUDA graphs.
    """
    fast = fold_batchnorm(model) if fold else copy.deepcopy(model).eval()
    # As in training, channels_last only for the built-in conv networks it was measured on.
    if channels_last and not getattr(model, "custom_networks", False):
        fast = fast.to(memory_format=torch.channels_last)
    if compile:
        compile_networks(fast, mode)
    return fast


def warm_up(fn, *args, repeats: int = 2) -> float:
    """Calls fn(*args) `repeats` times and returns the seconds the first call took (compile time)."""
    started = time.perf_counter()
    fn(*args)
    first = time.perf_counter() - started
    for _ in range(repeats - 1):
        fn(*args)
    return first


def network_autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast around the networks on CUDA; the bounds are computed in fp32 by the caller.

    On CPU bf16 autocast was about 20x slower on the machine we measured, so it is never used there.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_full_precision(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """bf16/fp16 outputs of an autocast region back to fp32; fp32 and fp64 pass through untouched."""
    return tuple(t.float() if t.dtype in (torch.bfloat16, torch.float16) else t for t in tensors)


def set_threads(threads: int | None) -> int:
    """Sets torch's intra-op threads (None leaves the default: one per core) and returns the count."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
