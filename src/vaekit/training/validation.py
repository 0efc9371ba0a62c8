"""The ELBO and its terms over a whole image set, reproducibly: what validation reports every epoch."""

from __future__ import annotations

from typing import Any

import torch

from vaekit.data.batching import binarize_fixed, to_float
from vaekit.models.precision import full_precision
from vaekit.objectives.bounds import elbo_terms
from vaekit.training.distributed import DistContext


def bound_terms(
    model, images: torch.Tensor, batch_size: int, binarize: bool, seed: int, ctx: DistContext | None = None
) -> dict[str, torch.Tensor]:
    """Per-image ELBO, reconstruction and KL (nats) over `images`, reproducibly; with levels L >= 2
    also "kl_groups" (N, L), each group's KL, top group first.

    With several processes each rank takes every world_size-th image, so no image is
    counted twice and none is padded in.
    """
    ctx = ctx or DistContext()
    index = torch.arange(ctx.rank, len(images), ctx.world_size)
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {"elbo": [], "recon": [], "kl": []}
    levels = getattr(getattr(model, "config", None), "levels", 1)  # every rank knows L, even one without images
    if levels > 1:
        out["kl_groups"] = []  # (B, L) per batch, top group first
    device = images.device
    with (
        full_precision(model),
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        torch.inference_mode(),
    ):
        torch.manual_seed(seed + 1)
        # Binarise the whole set before sharding: the same images whatever the process count.
        x_all = (binarize_fixed(images, seed) if binarize else to_float(images))[index]
        for start in range(0, len(index), batch_size):
            terms = elbo_terms(model, x_all[start : start + batch_size])
            for key in out:
                out[key].append(getattr(terms, key).double())
    model.train(was_training)
    return {
        k: torch.cat(v)
        if v
        else torch.zeros(0, *((levels,) if k == "kl_groups" else ()), dtype=torch.float64, device=device)
        for k, v in out.items()
    }


def bound_means(
    model, images: torch.Tensor, batch_size: int, binarize: bool, seed: int, ctx: DistContext | None = None
) -> dict[str, Any]:
    """Means of `bound_terms` over the whole set, summed across ranks; with levels L >= 2 also
    "kl_groups", each group's mean KL (a list, top group first)."""
    ctx = ctx or DistContext()
    terms = bound_terms(model, images, batch_size, binarize, seed, ctx)
    count = torch.tensor(float(len(terms["elbo"])), dtype=torch.float64, device=terms["elbo"].device)
    groups = terms["kl_groups"].double().sum(0) if "kl_groups" in terms else terms["kl"].new_zeros(0)
    totals = torch.cat([torch.stack([terms["elbo"].sum(), terms["recon"].sum(), terms["kl"].sum(), count]), groups])
    elbo, recon, kl, n, *per_group = ctx.all_reduce_sum(totals).tolist()
    means = {"elbo": elbo / max(n, 1.0), "recon": recon / max(n, 1.0), "kl": kl / max(n, 1.0), "count": int(n)}
    if per_group:
        means["kl_groups"] = [g / max(n, 1.0) for g in per_group]
    return means
