"""Speed paths that never change the numbers beyond float rounding. The model as built is
plain PyTorch; training and evaluation apply these where they ask for speed.

- `fast_networks`: swaps the built-in networks' modules for their fast twins (fast_modules.py:
  same parameters, same state-dict keys). Training always runs them (`training_networks`).
- `fold_batchnorm`: an eval-only copy whose BatchNorm layers are folded into the convolution
  before them (one pass over the weights; each conv then carries a bias instead).
- `crop_in_decoder`: an eval-only change to the built-in decoder's last transposed
  convolution so that it computes the data's 28x28 pixels, not the 32x32 frame around them.
- `inference_model`: the copy evaluation should run: fast twins, folded, cropped in the
  decoder, channels_last, optionally compiled.
- `compile_networks`: torch.compile of the encoder and decoder only (the distributions and
  bounds stay eager Python, so they still read like the maths), for evaluation and for
  training steps (`--compile`).
- `set_threads`: intra-op threads for this process.

Each was measured by benchmarks/throughput.py; see benchmarks/README.md for what won.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from vaekit.models.fast_modules import FusedHeadsConvEncoder, MatmulConvTranspose2d, twin
from vaekit.models.networks import ConvDecoder, ConvEncoder
from vaekit.models.precision import (
    NETWORKS,
    AutocastNetwork,
    autocast_class,
    autocast_networks,
    plain_type,
    without_autocast,
)


def fast_networks(model: Any) -> nn.Module:
    """Swaps, in place, the built-in networks' modules for their fast twins and returns `model`.

    A user's own networks are left as they are. The parameters stay the same objects, so an
    optimiser already built keeps working, and checkpoints load either way. Networks already
    under autocast (autocast_networks) stay under it.
    """
    if plain_type(model.encoder) is ConvEncoder:
        autocast = isinstance(model.encoder, AutocastNetwork)
        fused = twin(without_autocast(model.encoder), FusedHeadsConvEncoder)
        model.encoder = twin(fused, autocast_class(FusedHeadsConvEncoder)) if autocast else fused
    if plain_type(model.decoder) is ConvDecoder:
        convs = [
            (parent, name, child)
            for parent in model.decoder.modules()
            for name, child in parent.named_children()
            if MatmulConvTranspose2d.applies_to(child)
        ]
        for parent, name, child in convs:
            setattr(parent, name, twin(child, MatmulConvTranspose2d))
    return model


def training_networks(model: nn.Module, device: torch.device, precision: str = "fp32") -> nn.Module:
    """What training runs, in place: the fast twins, and with precision "bf16" the networks under
    bf16 autocast (fp32 bounds); `devices.resolve_precision` turns "auto" into one of the two."""
    fast_networks(model)
    if precision == "bf16":
        autocast_networks(model)
    return model


_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


@torch.no_grad()
def _fold_pair(conv: Any, bn: Any) -> nn.Module:
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
    return (
        type(conv) in _CONVS + (MatmulConvTranspose2d,)
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.running_mean is not None
        and not (isinstance(conv, nn.ConvTranspose2d) and conv.groups != 1)
    )


def crop_in_decoder(model: Any) -> nn.Module:
    """Moves the VAE's crop of the zero frame into the built-in decoder, in place, and returns
    `model`: the last transposed convolution's padding grows by the frame's width, which drops
    exactly the frame's outputs (a 16x16 -> 28x28 layer instead of 16x16 -> 32x32, 77% of its
    arithmetic). Eval mode only: what follows that convolution (BatchNorm with running
    statistics, the activation, the 1x1 head) is per pixel, whereas in training BatchNorm's
    batch statistics take in the frame. Anything else (a user's decoder, data with no frame) is
    left as it is.
    """
    if can_crop_in_decoder(model):
        last = model.decoder.body[-1][0]
        last.padding = (last.padding[0] + model.border,) * 2
        model.decoder_crops = True
    return model


def can_crop_in_decoder(model: Any) -> bool:
    """Whether crop_in_decoder changes `model`: a frame to crop, the built-in decoder, not yet cropped."""
    if model.border == 0 or model.decoder_crops or plain_type(model.decoder) is not ConvDecoder:
        return False
    last = model.decoder.body[-1][0]
    return type(last) is nn.ConvTranspose2d and len(set(last.padding)) == 1


def compile_networks(
    model: nn.Module, mode: str | None = None, dynamic: bool = False, backend: str = "inductor"
) -> nn.Module:
    """Compiles `model.encoder` and `model.decoder` in place with torch.compile and returns model.

    Evaluation keeps shapes static (one batch size; a last, shorter batch costs one more
    compilation, paid once). Training (`--compile`) asks for `dynamic=True`: an epoch's last,
    shorter batch and the VampPrior's pseudo-inputs then run the one graph instead of compiling
    more (~1 min each on a 2-core CPU). `backend` is torch.compile's ("eager" only traces: the
    tests use it for speed).
    """
    for name in NETWORKS:
        getattr(model, name).compile(mode=mode, dynamic=dynamic, backend=backend)
    return model


def inference_model(
    model: nn.Module,
    fold: bool = True,
    channels_last: bool = True,
    compile: bool = False,
    mode: str | None = None,
    crop: bool = True,
) -> nn.Module:
    """The copy to evaluate with: eval mode, fast twins, BatchNorm folded, the frame cropped in
    the decoder, channels_last; compiled if asked. The original is not touched.

    On CUDA, `compile` with mode="reduce-overhead" uses CUDA graphs.
    """
    fast = fast_networks(fold_batchnorm(model) if fold else copy.deepcopy(model).eval())
    if crop:
        crop_in_decoder(fast)
    # As in training, channels_last only for the built-in conv networks it was measured on.
    if channels_last and not getattr(model, "custom_networks", False):
        fast = fast.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub omits it
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


def set_threads(threads: int | None) -> int:
    """Sets torch's intra-op threads (None leaves the default: one per core) and returns the count."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
