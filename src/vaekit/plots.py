"""Pictures of a run: image grids (PIL) and metric plots (matplotlib, Agg).

Heavy imports (matplotlib, PIL) happen inside the functions so that ``import vaekit``
stays fast.  Every function writes its file atomically (:func:`vaekit.atomic.atomic_write`)
and returns the path it wrote.  Matplotlib figures are
built as :class:`matplotlib.figure.Figure` objects on an Agg canvas, never registered
with ``pyplot``, and are closed after saving, so plotting once per epoch leaks nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from matplotlib.figure import Figure

__all__ = [
    "image_grid",
    "save_image_grid",
    "save_reconstructions",
    "save_interpolation",
    "plot_loss_curves",
    "plot_latent_scatter",
    "plot_component_usage",
    "pca_2d",
]

#: Value (in [0, 1]) of the separator pixels between grid cells and of blank cells.
PAD_VALUE = 1.0
#: Images per row in :func:`save_reconstructions`.
RECON_PER_ROW = 8


# ----------------------------------------------------------------------------- helpers


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
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


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()  # also covers bfloat16/float16, which numpy lacks or mangles
        x = x.numpy()
    return np.asarray(x)


def _images_to_uint8(images: Any) -> np.ndarray:
    """(N,C,H,W) floats in [0,1] with C in {1,3} -> (N,H,W,C) uint8 (out-of-range clamped)."""
    arr = _as_numpy(images).astype(np.float64, copy=False)
    if arr.ndim == 3:  # (N,H,W): grey without channel axis
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C in {{1, 3}}, got {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError("no images to arrange (N == 0)")
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    arr = np.clip(arr, 0.0, 1.0)
    return np.rint(arr * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


def _grid_from_uint8(cells: np.ndarray, nrow: int, padding: int) -> np.ndarray:
    """Arrange (N,H,W,C) uint8 cells, ``nrow`` per row, with ``padding`` pixels around each."""
    n, h, w, c = cells.shape
    ncols = max(1, min(nrow, n))
    nrows = math.ceil(n / ncols)
    pad_px = int(round(PAD_VALUE * 255))
    grid = np.full(
        (nrows * h + (nrows + 1) * padding, ncols * w + (ncols + 1) * padding, c),
        pad_px,
        dtype=np.uint8,
    )
    for i in range(n):
        r, col = divmod(i, ncols)
        y = padding + r * (h + padding)
        x = padding + col * (w + padding)
        grid[y : y + h, x : x + w] = cells[i]
    return grid[:, :, 0] if c == 1 else grid


def _save_array_png(arr: np.ndarray, path: str | os.PathLike[str]) -> Path:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(arr), mode="L" if arr.ndim == 2 else "RGB")
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def _to_float(value: Any) -> float | None:
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


# ----------------------------------------------------------------------------- grids


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile images into one picture.

    ``images`` is (N, C, H, W), floats in [0, 1] (clamped), C in {1, 3}.  ``nrow`` is the
    number of images per row (default: ``ceil(sqrt(N))``, a roughly square grid).  Cells
    are separated and surrounded by ``padding`` white pixels.  Returns an (H, W) uint8
    array for grey images and (H, W, 3) for RGB.  Image ``i`` sits in grid row
    ``i // nrow``, column ``i % nrow``.
    """
    cells = _images_to_uint8(images)
    if nrow is None:
        nrow = math.ceil(math.sqrt(cells.shape[0]))
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    return _grid_from_uint8(cells, nrow, padding)


def save_image_grid(images: torch.Tensor, path: str | os.PathLike[str], nrow: int | None = None) -> Path:
    """Write :func:`image_grid` of ``images`` to ``path`` as PNG (atomically)."""
    return _save_array_png(image_grid(images, nrow=nrow), path)


def save_reconstructions(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write originals and their reconstructions as alternating rows.

    Up to :data:`RECON_PER_ROW` (8) images per row: row 0 holds originals 0..7, row 1
    their reconstructions (same columns), row 2 originals 8..15, and so on.  A short last
    chunk is filled with blank cells so every reconstruction sits right below its original.
    """
    orig = _images_to_uint8(originals)
    recon = _images_to_uint8(reconstructions)
    if orig.shape != recon.shape:
        raise ValueError(
            f"originals {tuple(orig.shape)} and reconstructions {tuple(recon.shape)} must have the same shape"
        )
    n = orig.shape[0]
    ncols = min(n, RECON_PER_ROW)
    blank = np.full((1, *orig.shape[1:]), int(round(PAD_VALUE * 255)), dtype=np.uint8)
    rows: list[np.ndarray] = []
    for start in range(0, n, ncols):
        for src in (orig, recon):
            chunk = src[start : start + ncols]
            if chunk.shape[0] < ncols:
                chunk = np.concatenate([chunk, np.repeat(blank, ncols - chunk.shape[0], 0)])
            rows.append(chunk)
    return _save_array_png(_grid_from_uint8(np.concatenate(rows), ncols, 2), path)


def save_interpolation(
    strips: list[torch.Tensor],
    path: str | os.PathLike[str],
    labels: list[str] | None = None,
) -> Path:
    """Write interpolation strips, one strip (T, C, H, W) per row.

    Strips of different lengths are padded with blank cells.  With ``labels`` (one per
    strip, e.g. ``["linear", "spherical"]``) the name of each row is drawn to its left.
    """
    if not strips:
        raise ValueError("no interpolation strips to draw")
    if labels is not None and len(labels) != len(strips):
        raise ValueError(f"got {len(labels)} labels for {len(strips)} strips")
    cells = [_images_to_uint8(s) for s in strips]
    shape = cells[0].shape[1:]
    for s in cells[1:]:
        if s.shape[1:] != shape:
            raise ValueError("all interpolation strips must hold images of the same shape")
    steps = max(s.shape[0] for s in cells)
    blank = np.full((1, *shape), int(round(PAD_VALUE * 255)), dtype=np.uint8)
    padded = [np.concatenate([s, np.repeat(blank, steps - s.shape[0], 0)]) if s.shape[0] < steps else s for s in cells]
    padding = 2
    grid = _grid_from_uint8(np.concatenate(padded), steps, padding)
    if not labels:
        return _save_array_png(grid, path)

    from PIL import Image, ImageDraw, ImageFont

    cell_h = shape[0]
    font_size = int(min(max(10, cell_h // 2), 24))
    try:
        font: Any = ImageFont.load_default(size=font_size)
    except (TypeError, OSError):  # old Pillow or no FreeType: small bitmap font
        font = ImageFont.load_default()
    img = Image.fromarray(grid, mode="L" if grid.ndim == 2 else "RGB").convert("RGB")
    measure = ImageDraw.Draw(img)
    margin = int(max(measure.textlength(str(t), font=font) for t in labels)) + 8
    canvas = Image.new("RGB", (img.width + margin, img.height), (255, 255, 255))
    canvas.paste(img, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(labels):
        y_mid = padding + r * (cell_h + padding) + cell_h / 2
        draw.text((4, y_mid), str(text), fill=(0, 0, 0), font=font, anchor="lm")
    return _save_array_png(np.asarray(canvas), path)


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

    fig = _new_figure((13.0, 3.8))
    axes = fig.subplots(1, 3)
    for ax, (key, title) in zip(axes, _LOSS_PANELS):
        drawn = False
        for split, style in (("train", "-"), ("val", "--")):
            xs: list[float] = []
            ys: list[float] = []
            for i, row in enumerate(rows):
                y = _to_float(row.get(f"{split}_{key}"))
                if y is None:
                    continue
                x = _to_float(row.get("epoch"))
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
    return _save_figure(fig, path)


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
    z = _as_numpy(means).astype(np.float64, copy=False)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"means must be a non-empty (N, D) array, got shape {z.shape}")
    n, d = z.shape
    lab = None if labels is None else _as_numpy(labels).reshape(-1)
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

    fig = _new_figure((6.5, 5.5))
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
    return _save_figure(fig, path)


def plot_component_usage(weights: Sequence[float], path: str | os.PathLike[str], rows: Sequence[dict] = ()) -> Path:
    """Bar chart of the mean mixture weight of each component, entropy in the title; beside it,
    when metrics.csv ``rows`` carry the usage columns, the effective number of components per epoch.

    The entropy (nats) is of the weights normalised to sum to one; the maximum ``log K``
    (all components used equally) and the effective number of components ``exp(H)`` are
    shown next to it.  A dashed line marks the uniform weight ``1/K``.  Over epochs,
    ``exp`` of the mean weights' entropy (how many components the data set uses) is drawn
    with ``exp`` of the mean per-image entropy (how many each image spreads over).
    """
    w = _as_numpy(weights).astype(np.float64, copy=False).reshape(-1)
    if w.size == 0:
        raise ValueError("no mixture weights to plot")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("mixture weights must be finite, non-negative and not all zero")
    k = w.size
    p = w / w.sum()
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    history = [
        (x, _to_float(r.get("usage_entropy")), _to_float(r.get("usage_image_entropy")))
        for i, r in enumerate(rows)
        for x in [_to_float(r.get("epoch")) or float(i + 1)]
    ]
    history = [h for h in history if h[1] is not None and h[2] is not None]

    fig = _new_figure((max(6.0, 0.45 * k + 2.0) + (5.0 if history else 0.0), 4.0))
    axes = fig.subplots(1, 2 if history else 1)
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
    return _save_figure(fig, path)
