"""Speed paths that never change the numbers beyond float rounding. The model as built is
plain PyTorch; training and evaluation apply these where they ask for speed.

- `fast_networks`: swaps the built-in networks' modules for their fast twins (fast_modules.py:
  same parameters, same state-dict keys). Training always runs them (`training_networks`).
- `autocast_networks`: the encoder and decoder run under bf16 autocast on CUDA and hand fp32
  to the distributions (training with `--precision bf16`); `full_precision` takes that off for
  a block (validation, evaluation).
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
- `decoded_log_prob`: log p(x|z) for many z at once without gradients; on a CPU, pieces of
  the batch decode side by side on single-threaded workers.

Each was measured by benchmarks/throughput.py; see benchmarks/README.md for what won.
"""

from __future__ import annotations

import copy
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch
from torch import nn

from .fast_modules import FusedHeadsConvEncoder, MatmulConvTranspose2d, twin
from .networks import ConvDecoder, ConvEncoder

NETWORKS = ("encoder", "decoder")

# Decoded images per piece in decoded_log_prob. On the 2-core CPU, 100-400 image pieces on
# single-threaded workers ran 1.37-1.65x the rate of one 2,000-image call on both threads
# (benchmarks/README.md, eval_nll.py); the piece size, not the thread count, fixes the numbers.
CPU_PIECE_IMAGES = 200


def fast_networks(model: nn.Module) -> nn.Module:
    """Swaps, in place, the built-in networks' modules for their fast twins and returns `model`.

    A user's own networks are left as they are. The parameters stay the same objects, so an
    optimiser already built keeps working, and checkpoints load either way. Networks already
    under autocast (autocast_networks) stay under it.
    """
    if _plain_type(model.encoder) is ConvEncoder:
        autocast = isinstance(model.encoder, AutocastNetwork)
        fused = twin(_without_autocast(model.encoder), FusedHeadsConvEncoder)
        model.encoder = twin(fused, _autocast_class(FusedHeadsConvEncoder)) if autocast else fused
    if _plain_type(model.decoder) is ConvDecoder:
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
    bf16 autocast on a GPU (fp32 bounds). On CPU bf16 was ~20x slower, so it is never used there."""
    fast_networks(model)
    if device.type == "cuda" and precision == "bf16":
        autocast_networks(model)
    return model


class AutocastNetwork(nn.Module):
    """Mixed into a network's own class by `autocast_networks`: its forward under bf16 autocast
    on CUDA, its outputs back in fp32, so the distributions and bounds never see bf16."""

    plain_class: type[nn.Module]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with network_autocast(x.device):
            out = super().forward(x, *args, **kwargs)
        return to_full_precision(*out) if isinstance(out, (tuple, list)) else to_full_precision(out)[0]


_AUTOCAST_CLASSES: dict[type, type] = {}


def _autocast_class(cls: type[nn.Module]) -> type[nn.Module]:
    if cls not in _AUTOCAST_CLASSES:
        _AUTOCAST_CLASSES[cls] = type(f"Autocast{cls.__name__}", (AutocastNetwork, cls), {"plain_class": cls})
    return _AUTOCAST_CLASSES[cls]


def autocast_networks(model: nn.Module) -> nn.Module:
    """Runs model.encoder and model.decoder (any nn.Module, a user's too) under bf16 autocast on
    CUDA from now on, in place; a no-op on other devices. Returns `model`."""
    for name in NETWORKS:
        network = getattr(model, name)
        if not isinstance(network, AutocastNetwork):
            setattr(model, name, twin(network, _autocast_class(type(network))))
    return model


def _plain_type(network: nn.Module) -> type:
    return network.plain_class if isinstance(network, AutocastNetwork) else type(network)


def _without_autocast(network: nn.Module) -> nn.Module:
    return twin(network, network.plain_class) if isinstance(network, AutocastNetwork) else network


@contextmanager
def full_precision(model: nn.Module) -> Iterator[nn.Module]:
    """fp32 networks inside the block, autocast as it was after it: validation picks the best
    checkpoint and evaluation reports its numbers on the same fp32 model on every device,
    whatever training ran in (bf16 on a GPU with --precision bf16)."""
    swapped = [name for name in NETWORKS if isinstance(getattr(model, name, None), AutocastNetwork)]
    for name in swapped:
        setattr(model, name, _without_autocast(getattr(model, name)))
    try:
        yield model
    finally:
        for name in swapped:
            network = getattr(model, name)
            setattr(model, name, twin(network, _autocast_class(type(network))))


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
    return (
        type(conv) in _CONVS + (MatmulConvTranspose2d,)
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.running_mean is not None
        and not (isinstance(conv, nn.ConvTranspose2d) and conv.groups != 1)
    )


def crop_in_decoder(model: nn.Module) -> nn.Module:
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


def can_crop_in_decoder(model: nn.Module) -> bool:
    """Whether crop_in_decoder changes `model`: a frame to crop, the built-in decoder, not yet cropped."""
    if model.border == 0 or model.decoder_crops or _plain_type(model.decoder) is not ConvDecoder:
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


def network_autocast(device: torch.device, enabled: bool = True) -> Any:
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


@functools.cache
def _single_thread_workers(workers: int) -> ThreadPoolExecutor:
    # Intra-op threads are per thread: each worker runs its ops on its own core.
    return ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,), thread_name_prefix="decode")


def decoded_log_prob(model: nn.Module, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """model.decode(z).log_prob(target) for z (S, B, D): (S, B), without gradients.

    On a CPU, z is decoded in pieces of about CPU_PIECE_IMAGES images (whole samples of all B
    images), side by side on one single-threaded worker per intra-op thread. The pieces do not
    depend on the thread count, so neither do the numbers. Elsewhere: one call.
    """
    if z.device.type != "cpu":
        with torch.no_grad():
            return model.decode(z).log_prob(target)
    pieces = z.split(max(1, CPU_PIECE_IMAGES // z.shape[1]))
    inference = torch.is_inference_mode_enabled()

    def piece_log_prob(piece: torch.Tensor) -> torch.Tensor:
        # Grad and inference modes are thread-local: the worker takes the caller's.
        with torch.inference_mode(inference), torch.no_grad():
            return model.decode(piece).log_prob(target)

    threads = torch.get_num_threads()
    if threads == 1 or len(pieces) == 1:
        return torch.cat([piece_log_prob(piece) for piece in pieces])
    return torch.cat(list(_single_thread_workers(threads).map(piece_log_prob, pieces)))
