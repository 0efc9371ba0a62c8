"""Image grids of a run (PIL): samples, reconstructions under their originals, interpolation strips.

PIL is imported inside the functions so that ``import vaekit`` stays fast.  Every function
writes its file atomically (:func:`vaekit.atomic.atomic_write`) and returns the path it wrote.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vaekit.atomic import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "image_grid",
    "save_image_grid",
    "save_reconstructions",
    "save_interpolation",
]

#: Value (in [0, 1]) of the separator pixels between grid cells and of blank cells.
PAD_VALUE = 1.0
#: Images per row in :func:`save_reconstructions`.
RECON_PER_ROW = 8


# ----------------------------------------------------------------------------- helpers


def as_numpy(x: Any) -> np.ndarray:
    """``x`` (a tensor on any device, an array or a sequence) as a numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()  # also covers bfloat16/float16, which numpy lacks or mangles
        x = x.numpy()
    return np.asarray(x)


def _images_to_uint8(images: Any) -> np.ndarray:
    """(N,C,H,W) floats in [0,1] with C in {1,3} -> (N,H,W,C) uint8 (out-of-range clamped)."""
    arr = as_numpy(images).astype(np.float64, copy=False)
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
