"""Metric plots of a run (matplotlib, Agg): loss curves, the latent scatter, component usage.

Matplotlib is imported inside the functions so that ``import vaekit`` stays fast.  Every
function writes its file atomically (:func:`vaekit.atomic.atomic_write`) and returns the
path it wrote.  Figures are built as :class:`matplotlib.figure.Figure` objects on an Agg
canvas, never registered with ``pyplot``, and are closed after saving, so plotting once
per epoch leaks nothing.  The image grids (PIL) live in :mod:`vaekit.report.image_grids`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vaekit.atomic import atomic_write
from vaekit.report.image_grids import as_numpy

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from matplotlib.figure import Figure

__all__ = [
    "plot_loss_curves",
    "plot_latent_scatter",
    "plot_component_usage",
    "pca_2d",
]


# ----------------------------------------------------------------------------- helpers


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A matplotlib Figure of `figsize` inches on the Agg canvas, outside pyplot's state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` as PNG atomically and release it."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        fig.clear()
        try:  # harmless if the figure was never known to pyplot
            import matplotlib.pyplot as plt

            plt.close(fig)
        except Exception:  # pragma: no cover - pyplot unavailable
            pass


def cell_float(value: Any) -> float | None:
    """Float of a CSV cell; None for missing, empty or unparsable values."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# ----------------------------------------------------------------------------- plots


_LOSS_PANELS = (
    ("elbo", "ELBO"),
    ("recon", "reconstruction"),
    ("kl", "KL divergence"),
)


def plot_loss_curves(rows: list[dict], path: str | os.PathLike[str]) -> Path:
    """Plot ELBO, reconstruction and KL per epoch (train and validation) in three panels.

    ``rows`` are metrics.csv rows (dicts); values may be numbers or strings, missing or
    empty cells are skipped.  A row without an ``epoch`` is placed at its 1-based index.
    """
    from matplotlib.ticker import MaxNLocator

    fig = new_figure((13.0, 3.8))
    axes = fig.subplots(1, 3)
    for ax, (key, title) in zip(axes, _LOSS_PANELS):
        drawn = False
        for split, style in (("train", "-"), ("val", "--")):
            xs: list[float] = []
            ys: list[float] = []
            for i, row in enumerate(rows):
                y = cell_float(row.get(f"{split}_{key}"))
                if y is None:
                    continue
                x = cell_float(row.get("epoch"))
                xs.append(float(i + 1) if x is None else x)
                ys.append(y)
            if not ys:
                continue
            order = np.argsort(xs, kind="stable")
            ax.plot(
                np.asarray(xs)[order],
                np.asarray(ys)[order],
                style,
                marker="o" if len(ys) <= 60 else None,
                markersize=4,
                label="train" if split == "train" else "validation",
            )
            drawn = True
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{title} (nats)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, path)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of ``x`` (N, D) onto their first two principal components.

    Uses the SVD of the centred data.  Returns ``(points, ratios)``: ``points`` is (N, 2)
    and ``ratios`` the fraction of the total variance each of the two components explains
    (zero-padded when D < 2 or the data has no variance).  Each component's sign is fixed
    so that its largest-magnitude loading is positive, which makes the output deterministic.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"pca_2d expects a non-empty (N, D) array, got shape {x.shape}")
    xc = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(2, vt.shape[0])
    comps = vt[:k].copy()
    for i in range(k):
        j = int(np.argmax(np.abs(comps[i])))
        if comps[i, j] < 0:
            comps[i] = -comps[i]
    points = np.zeros((x.shape[0], 2))
    points[:, :k] = xc @ comps.T
    var = s**2
    total = float(var.sum())
    ratios = np.zeros(2)
    if total > 0:
        ratios[:k] = var[:k] / total
    return points, ratios


def plot_latent_scatter(
    means: torch.Tensor | np.ndarray,
    labels: Any,
    path: str | os.PathLike[str],
    class_names: list[str] | None = None,
) -> Path:
    """Scatter posterior means, coloured by class.

    D == 2 is drawn as is (axes z1, z2); D > 2 is projected with :func:`pca_2d` (axes
    "PC1 (xx% var)"); D == 1 is drawn as z1 against the sample index.  ``labels`` (N,)
    integer classes or None (single colour); ``class_names[label]`` names the legend.
    """
    z = as_numpy(means).astype(np.float64, copy=False)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"means must be a non-empty (N, D) array, got shape {z.shape}")
    n, d = z.shape
    lab = None if labels is None else as_numpy(labels).reshape(-1)
    if lab is not None and lab.shape[0] != n:
        raise ValueError(f"got {lab.shape[0]} labels for {n} latent means")

    if d == 1:
        xy = np.column_stack([z[:, 0], np.arange(n)])
        xlabel, ylabel, title = "z1", "sample index", "latent means (D=1)"
    elif d == 2:
        xy = z
        xlabel, ylabel, title = "z1", "z2", "latent means (D=2)"
    else:
        xy, ratios = pca_2d(z)
        xlabel = f"PC1 ({ratios[0] * 100:.0f}% var)"
        ylabel = f"PC2 ({ratios[1] * 100:.0f}% var)"
        title = f"latent means, PCA of D={d}"

    import matplotlib

    fig = new_figure((6.5, 5.5))
    ax = fig.subplots()
    size = 12 if n <= 2000 else 4
    if lab is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.7, color="tab:blue", linewidths=0)
    else:
        classes = np.unique(lab)
        cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, cls in enumerate(classes):
            sel = lab == cls
            name = str(cls.item() if hasattr(cls, "item") else cls)
            if class_names is not None:
                try:
                    idx = int(cls)
                    if 0 <= idx < len(class_names) and idx == cls:
                        name = str(class_names[idx])
                except (TypeError, ValueError):
                    pass
            ax.scatter(
                xy[sel, 0],
                xy[sel, 1],
                s=size,
                alpha=0.7,
                color=cmap(i % cmap.N),
                linewidths=0,
                label=name,
            )
        ax.legend(
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            markerscale=2,
            frameon=False,
            title="class",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def plot_component_usage(
    weights: Sequence[float] | torch.Tensor | np.ndarray, path: str | os.PathLike[str], rows: Sequence[dict] = ()
) -> Path:
    """Bar chart of the mean mixture weight of each component, entropy in the title; beside it,
    when metrics.csv ``rows`` carry the usage columns, the effective number of components per epoch.

    The entropy (nats) is of the weights normalised to sum to one; the maximum ``log K``
    (all components used equally) and the effective number of components ``exp(H)`` are
    shown next to it.  A dashed line marks the uniform weight ``1/K``.  Over epochs,
    ``exp`` of the mean weights' entropy (how many components the data set uses) is drawn
    with ``exp`` of the mean per-image entropy (how many each image spreads over).
    """
    w = as_numpy(weights).astype(np.float64, copy=False).reshape(-1)
    if w.size == 0:
        raise ValueError("no mixture weights to plot")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("mixture weights must be finite, non-negative and not all zero")
    k = w.size
    p = w / w.sum()
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    history: list[tuple[float, Any, Any]] = [
        (x, cell_float(r.get("usage_entropy")), cell_float(r.get("usage_image_entropy")))
        for i, r in enumerate(rows)
        for x in [cell_float(r.get("epoch")) or float(i + 1)]
    ]
    history = [h for h in history if h[1] is not None and h[2] is not None]

    fig = new_figure((max(6.0, 0.45 * k + 2.0) + (5.0 if history else 0.0), 4.0))
    axes: Any = fig.subplots(1, 2 if history else 1)
    ax = axes[0] if history else axes
    ax.bar(np.arange(k), w, color="tab:blue")
    ax.axhline(w.sum() / k, color="grey", linestyle="--", linewidth=1, label="uniform")
    ax.set_xticks(np.arange(k))
    ax.set_xlabel("mixture component")
    ax.set_ylabel("mean weight")
    ax.set_title(
        f"mixture component usage\nentropy {entropy:.3f} nats "
        f"(max {math.log(k):.3f}; effective {math.exp(entropy):.2f} of {k})"
    )
    ax.legend(frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    if history:
        from matplotlib.ticker import MaxNLocator

        ax = axes[1]
        epochs = np.asarray([h[0] for h in history])
        marker = "o" if len(history) <= 60 else None
        ax.plot(
            epochs, np.exp([h[1] for h in history]), marker=marker, markersize=4, label="data set: exp H(mean weights)"
        )
        ax.plot(
            epochs,
            np.exp([h[2] for h in history]),
            "--",
            marker=marker,
            markersize=4,
            label="per image: exp mean H(weights)",
        )
        ax.axhline(k, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(0.9, k + 0.3)
        ax.set_xlabel("epoch")
        ax.set_ylabel("effective components")
        ax.set_title("usage over training (validation images)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(frameon=False, fontsize="small")
        ax.grid(True, alpha=0.3)
    return save_figure(fig, path)
