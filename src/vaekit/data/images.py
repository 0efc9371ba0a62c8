"""Image containers, shared helpers and the non-IDX datasets (folder, npz, digits, cifar10)."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vaekit.config import IMAGE_SIZES, padded_size
from vaekit.errors import VaekitError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_MAX_NAMED = 5  # unreadable files named in the warning line


@dataclass(repr=False)
class ImageSet:
    """A set of images: uint8 (N, C, S, S), zero-padded to the network size S, plus optional labels."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageSet.images must be uint8 (N, C, S, S), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        self.images = self.images.contiguous()
        if self.labels is not None:
            self.labels = self.labels.to(torch.int64).contiguous()
            if self.labels.shape != (self.images.shape[0],):
                raise ValueError(
                    f"ImageSet.labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        lab = "None" if self.labels is None else f"int64{tuple(self.labels.shape)}"
        return f"ImageSet(images=uint8{tuple(self.images.shape)}, labels={lab})"


@dataclass
class DatasetSplits:
    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    image_size: int
    padded_size: int
    channels: int
    class_names: list[str] | None
    checksum: str
    source: str = field(default="")


# --------------------------------------------------------------------------- helpers


def check_image_size(image_size: int | None, default: int = 32) -> int:
    size = default if image_size is None else int(image_size)
    if size not in IMAGE_SIZES:
        raise VaekitError(
            f"image size {size} is not supported; use one of "
            f"{', '.join(map(str, IMAGE_SIZES))} (28 is zero-padded to 32)"
        )
    return size


def check_channels(channels: int | None) -> None:
    if channels is not None and channels not in (1, 3):
        raise VaekitError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")


def pad_images(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, C, H, H) uint8 -> new contiguous (N, C, size, size) tensor, zero border, image centred."""
    n, c, h, w = images.shape
    if h == size and w == size:
        return torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
    off_h, off_w = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, c, size, size), dtype=np.uint8)
    out[:, :, off_h : off_h + h, off_w : off_w + w] = images
    return torch.from_numpy(out)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Convert uint8 (N, C, H, W) between 1 and 3 channels (repeat grey / ITU-R 601 luma)."""
    c = images.shape[1]
    if c == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=1)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)
    grey = (images.astype(np.float32) * weights).sum(axis=1, keepdims=True)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (N, C, H, H) to (N, C, size, size) with bilinear interpolation (antialiased when shrinking)."""
    if images.shape[2] == size and images.shape[3] == size:
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    shrink = images.shape[2] > size
    out = []
    for chunk in torch.split(x, 4096):  # bounded memory for big sets
        out.append(
            torch.nn.functional.interpolate(
                chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
            )
        )
    y = torch.cat(out).round_().clamp_(0, 255).to(torch.uint8)
    return y.numpy()


def check_val_size(val_size: int | None) -> None:
    if val_size is not None and (type(val_size) is not int or val_size <= 0):
        raise VaekitError(f"--val-size must be a positive integer, got {val_size}")


def split_off_validation(n: int, val_size: int | None, default: int, what: str) -> int:
    """How many of `what`'s `n` training images stay for training once `val_size` (None:
    `default`) are held out for validation."""
    check_val_size(val_size)
    n_val = default if val_size is None else val_size
    if n_val >= n:
        if val_size is None:
            raise VaekitError(
                f"{what}: only {n} training images, need more than {n_val} for the validation split; re-download it"
            )
        raise VaekitError(
            f"--val-size {n_val} leaves no training images: {what} has {n} images to split "
            f"between training and validation; use a --val-size below {n}"
        )
    return n - n_val


def random_split(
    n: int, seed: int, what: str, val_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic split of range(n), indices sorted: 80/10/10 (at least one item in each
    part), or `val_size` validation items with the test part unchanged: it is the permutation's
    tail, so the test set does not depend on the validation size."""
    if n < 3:
        raise VaekitError(f"{what} has only {n} image(s); at least 3 are needed for train/val/test splits")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, n // 10)
    n_train = split_off_validation(n - n_test, val_size, max(1, n // 10), what)
    n_val = n - n_test - n_train
    return (np.sort(perm[:n_train]), np.sort(perm[n_train : n_train + n_val]), np.sort(perm[n_train + n_val :]))


def make_splits(
    name: str,
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    image_size: int,
    channels: int,
    class_names: list[str] | None,
    checksum: str,
    source: str,
    seed: int,
    val_size: int | None = None,
) -> DatasetSplits:
    """images: uint8 (N, C, image_size, image_size) -> 80/10/10 DatasetSplits padded as needed
    (`val_size` validation images instead of a tenth, see random_split)."""
    padded = padded_size(image_size)
    parts = random_split(len(images), seed, name, val_size)

    def subset(idx: np.ndarray) -> ImageSet:
        lab = None if labels is None else torch.from_numpy(labels[idx].astype(np.int64))
        return ImageSet(pad_images(images[idx], padded), lab)

    train, val, test = (subset(i) for i in parts)
    return DatasetSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        image_size=image_size,
        padded_size=padded,
        channels=channels,
        class_names=class_names,
        checksum=checksum,
        source=source,
    )


def cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vaekit" / name


def warn(message: str) -> None:
    print(f"vaekit: warning: {message}", file=sys.stderr, flush=True)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


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
        raise VaekitError(f"cannot read image folder {path} ({_one_line(e)}); check its permissions") from None
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
        raise VaekitError(f"{path}: cannot read npz file ({_one_line(e)}); save it with numpy.savez") from None
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


# --------------------------------------------------------------------------- digits


def load_digits(image_size: int | None, channels: int | None, seed: int, val_size: int | None = None) -> DatasetSplits:
    check_channels(channels)
    size = check_image_size(image_size)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise VaekitError(
            "the digits dataset needs scikit-learn; install it with "
            "`pip install scikit-learn` (or `pip install vaekit[digits]`)"
        ) from None
    bunch = sk_load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)  # (N, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    digest = hashlib.sha256(np.ascontiguousarray(raw).tobytes() + labels.tobytes()).hexdigest()
    x = torch.from_numpy(raw * (255.0 / 16.0)).to(torch.float32)[:, None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = x.round_().clamp_(0, 255).to(torch.uint8).numpy()
    images = to_channels(images, channels or 1)
    return make_splits(
        "digits",
        images,
        labels,
        image_size=size,
        channels=channels or 1,
        class_names=[str(i) for i in range(10)],
        checksum=digest,
        source="sklearn.datasets.load_digits",
        seed=seed,
        val_size=val_size,
    )


# --------------------------------------------------------------------------- cifar10

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_cifar10(
    data_dir: str | None, image_size: int | None, channels: int | None, download: bool, val_size: int | None = None
) -> DatasetSplits:
    check_channels(channels)
    size = check_image_size(image_size)
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:
        raise VaekitError(
            "the cifar10 dataset needs torchvision; install it with `pip install torchvision` or use another dataset"
        ) from None
    root = Path(os.path.expanduser(data_dir)) if data_dir else cache_dir("cifar10")
    try:
        root.mkdir(parents=True, exist_ok=True)
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except Exception as e:
        raise VaekitError(
            f"cifar10 could not be loaded from {root} ({_one_line(e)}); check the network "
            f"or pass --data-dir DIR holding cifar-10-batches-py"
        ) from None
    tr_x = np.asarray(train.data, dtype=np.uint8).transpose(0, 3, 1, 2)
    te_x = np.asarray(test.data, dtype=np.uint8).transpose(0, 3, 1, 2)
    tr_y = np.asarray(train.targets, dtype=np.int64)
    te_y = np.asarray(test.targets, dtype=np.int64)
    digest = hashlib.sha256()
    for a in (tr_x, tr_y, te_x, te_y):
        digest.update(np.ascontiguousarray(a).tobytes())
    ch = channels or 3
    tr_x = to_channels(resize_images(tr_x, size), ch)
    te_x = to_channels(resize_images(te_x, size), ch)
    padded = padded_size(size)
    n_train = split_off_validation(len(tr_x), val_size, 5000, "cifar10")

    def subset(x: np.ndarray, y: np.ndarray) -> ImageSet:
        return ImageSet(pad_images(x, padded), torch.from_numpy(np.array(y, dtype=np.int64)))

    return DatasetSplits(
        name="cifar10",
        train=subset(tr_x[:n_train], tr_y[:n_train]),
        val=subset(tr_x[n_train:], tr_y[n_train:]),
        test=subset(te_x, te_y),
        image_size=size,
        padded_size=padded,
        channels=ch,
        class_names=list(CIFAR10_CLASSES),
        checksum=digest.hexdigest(),
        source=str(root),
    )
