"""The hierarchy's per-group KL over training (metrics.csv's val_kl_z* columns), with which groups are active."""

from __future__ import annotations

import os
from pathlib import Path

from vaekit.config import ACTIVE_GROUP_KL
from vaekit.report.plots import cell_float, new_figure, save_figure
from vaekit.runs.run_dir import GROUP_KL_PREFIX


def group_kl_columns(rows: list[dict]) -> list[str]:
    """metrics.csv's per-group KL columns, top group first ([] for a single-level run)."""
    return [c for c in (rows[0] if rows else {}) if c.startswith(GROUP_KL_PREFIX)]


def active_groups(rows: list[dict]) -> dict[str, bool]:
    """For each group (z3, z2, ...): whether its validation KL in the last epoch is at least ACTIVE_GROUP_KL nats."""
    last = rows[-1] if rows else {}
    return {c[len("val_kl_") :]: (cell_float(last.get(c)) or 0.0) >= ACTIVE_GROUP_KL for c in group_kl_columns(rows)}


def plot_group_kl(rows: list[dict], path: str | os.PathLike[str]) -> Path:
    """Each latent group's validation KL per epoch (nats, log scale), the title naming the inactive ones."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure((7.0, 3.8))
    ax = fig.subplots()
    for column in group_kl_columns(rows):
        points = [(cell_float(r.get("epoch")) or i + 1, cell_float(r.get(column))) for i, r in enumerate(rows)]
        xs = [x for x, y in points if y is not None]
        ys = [max(y, 1e-3) for y in (y for _, y in points) if y is not None]  # a log axis: no zeros
        ax.plot(xs, ys, marker="o", markersize=3, label=column[len("val_kl_") :])
    ax.axhline(ACTIVE_GROUP_KL, color="0.6", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation KL (nats per image)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(title="group (top first)", fontsize="small")
    inactive = [name for name, active in active_groups(rows).items() if not active]
    ax.set_title(
        "KL per latent group; "
        + (f"inactive (< {ACTIVE_GROUP_KL} nats): {', '.join(inactive)}" if inactive else "every group active")
    )
    return save_figure(fig, path)
