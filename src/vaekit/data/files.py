"""The datasets read from the user's own files: a folder of PNG/JPEG images (folder:PATH) and an npz file
(npz:PATH)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from vaekit.config import IMAGE_SIZES
from vaekit.errors import VaekitError

from .common import one_line, warn
from .images import DatasetSplits, check_channels, check_image_size, resize_images, to_channels
from .splits import make_splits

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_MAX_NAMED = 5  # unreadable files named in the warning line

# --------------------------------------------------------------------------- folder:PATH


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _walk_images(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if _is_image(p):
                out.append(p)
    return out


def _fit_square(im, size: int):
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def load_folder(
    path: str, image_size: int | None, channels: int | None, seed: int, val_size: int | None = None
) -> DatasetSplits:
    """The splits of a folder of PNG/JPEG images (`folder:PATH`): one sub-folder per class, or images
    at the top without labels. Each image is scaled and centre-cropped to `image_size`; `channels`
    None means grey when every image is grey, else RGB. Unreadable files are skipped with a warning.
    """
    from PIL import Image

    root = Path(os.path.expanduser(path))
    if not path or not root.exists():
        raise VaekitError(f"image folder {path!r} does not exist; pass an existing folder as folder:PATH")
    if not root.is_dir():
        raise VaekitError(f"{path} is not a folder; pass a folder of PNG/JPEG images as folder:PATH")
    size = check_image_size(image_size)
    check_channels(channels)
    try:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as e:
        raise VaekitError(f"cannot read image folder {path} ({one_line(e)}); check its permissions") from None
    classes = [(d.name, _walk_images(d)) for d in subdirs]
    classes = [(c, files) for c, files in classes if files]
    top_level = sorted(p for p in root.iterdir() if _is_image(p))
    if classes:
        if top_level:
            warn(f"ignored {len(top_level)} image(s) directly in {path} (not in a class sub-folder)")
        entries = [(p, k) for k, (_, files) in enumerate(classes) for p in files]
        class_names: list[str] | None = [c for c, _ in classes]
    else:
        entries = [(p, -1) for p in top_level]
        class_names = None
    if not entries:
        raise VaekitError(f"no PNG/JPEG images found in {path}; put images in it (one sub-folder per class)")

    grey_modes = {"1", "L", "LA", "I", "I;16", "F"}
    loaded, labels, bad, shapes, modes = [], [], [], [], []
    digest = hashlib.sha256()
    for p, k in entries:
        try:
            raw = p.read_bytes()
            with Image.open(p) as im:
                im.load()
                shapes.append(im.size)
                modes.append(im.mode)
                grey = im.mode in grey_modes
                if im.mode in ("I", "I;16", "F"):  # 16-bit / float grey: scale to 8 bits
                    arr = np.asarray(im, dtype=np.float64)
                    top = 65535.0 if arr.max() > 255 else 255.0
                    im2 = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
                else:
                    im2 = im.convert("L" if grey else "RGB")
                im2 = _fit_square(im2, size)
        except Exception:  # any decoder failure means "unreadable"; counted and named below
            bad.append(p)
            continue
        digest.update(str(p.relative_to(root)).encode() + b"\0" + raw)
        loaded.append((im2, grey))
        labels.append(k)
    if not loaded:  # checked before the warning below, so the user reads one line, not two
        raise VaekitError(
            f"none of the {len(entries)} image files in {path} could be read; check that they are valid PNG/JPEG files"
        )
    notes = []  # one warning line for everything the user should know about this folder
    if bad:
        names = [str(p.relative_to(root)) for p in bad]
        more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
        notes.append(f"skipped {len(bad)} unreadable file(s) in {path}: {', '.join(names[:_MAX_NAMED])}{more}")
    if len(set(shapes)) > 1 or len(set(modes)) > 1:
        notes.append(
            f"images in {path} come in {len(set(shapes))} size(s) and {len(set(modes))} mode(s) "
            f"({', '.join(sorted(set(modes)))}); each was scaled, centre-cropped to {size}x{size} and converted"
        )
    if notes:
        warn("; ".join(notes))
    if channels is None:
        channels = 1 if all(g for _, g in loaded) else 3
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for im, _ in loaded:
        a = np.asarray(im.convert(mode), dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    images = np.stack(arrays)
    lab = np.asarray(labels, dtype=np.int64) if class_names is not None else None
    return make_splits(
        f"folder:{path}",
        images,
        lab,
        image_size=size,
        channels=channels,
        class_names=class_names,
        checksum=digest.hexdigest(),
        source=str(root.resolve()),
        seed=seed,
        val_size=val_size,
    )


# --------------------------------------------------------------------------- npz:PATH


def _to_nchw(arr: np.ndarray, path: str) -> np.ndarray:
    shape = tuple(arr.shape)
    bad = (
        f"{path}: images array has shape {shape}; expected (N,H,W), (N,H,W,C) or (N,C,H,W) "
        f"with square images and C in 1 or 3"
    )
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        nchw_ok = shape[1] in (1, 3) and shape[2] == shape[3]
        nhwc_ok = shape[3] in (1, 3) and shape[1] == shape[2]
        if nchw_ok:
            pass
        elif nhwc_ok:
            arr = arr.transpose(0, 3, 1, 2)
        else:
            raise VaekitError(bad)
    else:
        raise VaekitError(bad)
    if arr.shape[0] == 0 or arr.shape[2] != arr.shape[3] or arr.shape[2] == 0:
        raise VaekitError(bad)
    return arr


def load_npz(
    path: str, image_size: int | None, channels: int | None, seed: int, val_size: int | None = None
) -> DatasetSplits:
    """The splits of an .npz file (`npz:PATH`): an `images` (or `x`, `x_train`, ...) array, uint8 or
    floats in [0, 1], shaped (N,H,W), (N,H,W,C) or (N,C,H,W), and optional integer `labels`
    (or `y`, ...). The images are resized to `image_size` and converted to `channels`.
    """
    p = Path(os.path.expanduser(path))
    if not path or not p.is_file():
        raise VaekitError(f"npz file {path!r} does not exist; pass an existing .npz file as npz:PATH")
    check_channels(channels)
    try:
        raw = p.read_bytes()
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.files)
            if not keys:
                raise VaekitError(f"{path}: npz file holds no arrays; save an 'images' array in it")
            key = next((k for k in ("images", "x", "x_train", "X", "X_train") if k in keys), keys[0])
            images = z[key]
            lkey = next((k for k in ("labels", "y", "y_train", "Y", "Y_train") if k in keys and k != key), None)
            labels = z[lkey] if lkey else None
    except VaekitError:
        raise
    except Exception as e:
        raise VaekitError(f"{path}: cannot read npz file ({one_line(e)}); save it with numpy.savez") from None
    images = _to_nchw(images, path)
    if images.dtype == np.uint8:
        pass
    elif np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise VaekitError(
                f"{path}: float images must lie in [0, 1] (found values in "
                f"[{np.nanmin(images):.3g}, {np.nanmax(images):.3g}]); rescale them or save uint8"
            )
        images = np.rint(images.astype(np.float32) * 255.0).astype(np.uint8)
    else:
        raise VaekitError(
            f"{path}: images array has dtype {images.dtype} and shape {tuple(images.shape)}; "
            f"save uint8 (0..255) or float (0..1) images"
        )
    n, c, h, _ = images.shape
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
            raise VaekitError(
                f"{path}: labels array '{lkey}' has shape {tuple(labels.shape)} and dtype "
                f"{labels.dtype}; expected {n} integer labels"
            )
        labels = labels.astype(np.int64)
    size = check_image_size(image_size, default=h if h in IMAGE_SIZES else 32)
    images = to_channels(resize_images(images, size), channels or c)
    class_names = None
    if labels is not None and labels.min() >= 0:
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    return make_splits(
        f"npz:{path}",
        images,
        labels,
        image_size=size,
        channels=channels or c,
        class_names=class_names,
        checksum=hashlib.sha256(raw).hexdigest(),
        source=str(p.resolve()),
        seed=seed,
        val_size=val_size,
    )
