"""Decoded images along paths between the posterior means of two test images."""

from __future__ import annotations

from pathlib import Path

import torch

from vaekit.data.batching import EVAL_BINARIZE_SEED, binarize_fixed, to_float
from vaekit.errors import VaekitError
from vaekit.report.image_grids import save_interpolation
from vaekit.runs.run_dir import load_run, load_run_data
from vaekit.runs.shipped import output_dir


def lerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """(steps, D) points on the straight line from a to b, both ends included."""
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device)[:, None]
    return (1 - t) * a + t * b


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """(steps, D) points along the great circle from a to b, with the norm interpolated linearly.

    Under a standard-normal prior most mass sits on a shell of radius ~sqrt(D); a straight
    line between two codes cuts inside it, through codes the decoder rarely saw, while the
    arc keeps to typical norms (White 2016). Nearly parallel codes fall back to the line.
    """
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device)[:, None]
    na, nb = a.norm(), b.norm()
    if na < 1e-8 or nb < 1e-8:
        return lerp(a, b, steps)
    cos = torch.clamp((a @ b) / (na * nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega < 1e-4 or torch.pi - omega < 1e-4:  # parallel or antipodal: the arc is not defined
        return lerp(a, b, steps)
    ua, ub = a / na, b / nb
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / torch.sin(omega)
    return direction * ((1 - t) * na + t * nb)


@torch.no_grad()
def interpolation_strips(
    model, images: torch.Tensor, pairs: list[tuple[int, int]], steps: int = 10
) -> tuple[list[torch.Tensor], list[str]]:
    """For each (i, j): a linear and a spherical strip (steps, C, H, W) between the posterior means
    (of the top group with levels >= 2, the lower groups at their priors' means along the path)."""
    model.eval()
    means = model.encode(images).mean  # (N, D)
    strips, labels = [], []
    for i, j in pairs:
        for name, path in (("linear", lerp), ("spherical", slerp)):
            strips.append(model.decode(path(means[i], means[j], steps), temperature=0.0).mean.float().cpu())
            labels.append(f"{name} {i}-{j}")
    return strips, labels


def interpolate_run(
    run_dir,
    out: str | Path | None = None,
    pairs: int = 3,
    steps: int = 10,
    data=None,
    seed: int = 0,
    encoder: torch.nn.Module | None = None,
    decoder: torch.nn.Module | None = None,
) -> Path:
    """Writes RUN/interpolations.png (or `out`): `pairs` pairs of test images of different classes when labelled.

    `encoder` and `decoder`: fresh instances of a run's own networks, as vaekit.load_run takes them.
    """
    if pairs < 1 or steps < 2:
        raise VaekitError(f"need at least one pair and two steps, got {pairs} pairs and {steps} steps")
    run = load_run(run_dir, encoder=encoder, decoder=decoder)
    data = data or load_run_data(run.config)
    test = data.test.images[:200]
    x = binarize_fixed(test, EVAL_BINARIZE_SEED) if run.config.data.binarize else to_float(test)
    chosen = _pick_pairs(data.test.labels[:200] if data.test.labels is not None else None, len(test), pairs, seed)
    strips, labels = interpolation_strips(run.model, x, chosen, steps)
    return save_interpolation(strips, Path(out) if out else output_dir(run.path) / "interpolations.png", labels)


def _pick_pairs(labels: torch.Tensor | None, n: int, pairs: int, seed: int) -> list[tuple[int, int]]:
    """Reproducible pairs; with labels, each pair's two images belong to different classes."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    chosen: list[tuple[int, int]] = []
    for i in order:
        if len(chosen) == pairs:
            break
        used = {k for pair in chosen for k in pair}
        if i in used:
            continue
        partners = (j for j in order if j != i and j not in used and (labels is None or labels[j] != labels[i]))
        partner = next(partners, None)
        if partner is not None:
            chosen.append((i, partner))
    if not chosen:
        chosen = [(0, min(1, n - 1))]
    return chosen
