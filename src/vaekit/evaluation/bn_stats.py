"""BatchNorm statistics re-estimated over the training set after training.

The running averages BatchNorm keeps in training trail the weights (momentum 0.1 over the last
steps), and with --ema they are an average of averages; p(x|z) at evaluation then uses
statistics no single set of weights produced. One pass over the training images with the final
weights gives the statistics of those weights instead (torch.optim.swa_utils.update_bn: the
mean over batches of each batch's mean and unbiased variance).
"""

from __future__ import annotations

import copy

import torch
from torch.optim.swa_utils import update_bn

from vaekit.data.batching import binarize_fixed, to_float

BN_SEED = 777  # the binarisation and latent draws of the pass: the same statistics every time


@torch.no_grad()
def reestimate_batchnorm(
    model: torch.nn.Module, images: torch.Tensor, binarize: bool, batch_size: int = 500
) -> torch.nn.Module:
    """A copy of `model` in eval mode whose BatchNorm layers hold the mean over batches of
    `images` (uint8) of their batch mean and variance, the encoder fed the images binarised as in
    training and the decoder one posterior draw per image. The caller's model and RNG are left as
    they were."""
    copied = copy.deepcopy(model)
    device = next(copied.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(BN_SEED)
        batches = [
            binarize_fixed(images[i : i + batch_size], BN_SEED + i)
            if binarize
            else to_float(images[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
        update_bn((b.to(device) for b in batches), copied)
    return copied.eval()
