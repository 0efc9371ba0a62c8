"""Batches straight from one uint8 tensor: an index gather, a scale, optional binarisation."""

from __future__ import annotations

import torch

EVAL_BINARIZE_SEED = 20190101  # independent of any training seed, so evaluation numbers compare across runs


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The same permutation on every rank and after every resume: a function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank r's disjoint, equally long share: every world_size-th index from r."""
    per_rank = order.numel() // world_size
    return order[rank::world_size][:per_rank]


def batch_count(n: int, batch_size: int) -> int:
    """How many batches of `batch_size` an epoch over `n` images has, a partial last one included."""
    # A last batch of one image is dropped: BatchNorm cannot train on it.
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


def to_float(images: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 (B, C, S, S) -> float32 in [0, 1]."""
    return images.to(torch.float32).div_(255.0).contiguous(memory_format=memory_format)


def make_batch(
    images: torch.Tensor,
    index: torch.Tensor,
    binarize: bool,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """The images at `index` as floats in [0, 1], binarised by a fresh Bernoulli draw if `binarize`."""
    x = to_float(images[index], memory_format)
    # Dynamic binarisation: a fresh draw per batch, from the global generator so resume replays it.
    return torch.bernoulli(x) if binarize else x


def binarize_fixed(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Binarise once with a fixed generator: the evaluation sets every run is compared on.

    Drawn on the CPU whatever the images' device: a CUDA generator with the same seed gives
    other draws, so a GPU evaluation would score a different test set.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(to_float(images.cpu()), generator=g).to(images.device)
