"""Finding, downloading and loading the IDX datasets (Fashion-MNIST, MNIST); the load_dataset entry point."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaekit.config import padded_size
from vaekit.errors import VaekitError

from .common import cache_dir
from .files import load_folder, load_npz
from .idx import parse_idx, read_idx_bytes
from .images import DatasetSplits, ImageSet, check_channels, pad_images, to_channels
from .packaged import load_cifar10, load_digits
from .splits import check_val_size, split_off_validation

DATASET_NAMES = ["fashion-mnist", "mnist", "digits", "cifar10", "folder:PATH", "npz:PATH"]

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
VAL_SIZE = 5000  # the last images of the training file, unless --val-size says otherwise

IDX_DATASETS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        # MD5 of the official .gz files (the Debian package recompresses them, so its copies differ).
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        "system": ["/usr/share/datasets/fashion-mnist"],
        "classes": [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
        "hint": "install it with `sudo apt-get install dataset-fashion-mnist` or pass --data-dir DIR "
        "holding the four IDX files",
    },
    "mnist": {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "system": ["/usr/share/datasets/mnist"],
        "classes": [str(i) for i in range(10)],
        "hint": "pass --data-dir DIR holding the four IDX files",
    },
}


# --------------------------------------------------------------------------- locating files


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = directory / name
        if p.is_file():
            return p
    return None


def _find_set(directory: Path) -> list[Path] | None:
    found = [_find_file(directory, stem) for stem in IDX_FILES]
    return found if all(found) else None  # type: ignore[return-value]


def _candidates(name: str, data_dir: str | None) -> list[Path]:
    dirs: list[Path] = []
    if data_dir is not None:
        d = Path(os.path.expanduser(data_dir))
        if not d.exists():
            raise VaekitError(
                f"data directory {data_dir} does not exist; pass an existing --data-dir DIR "
                f"holding the four {name} IDX files"
            )
        if not d.is_dir() or not os.access(d, os.R_OK | os.X_OK):
            raise VaekitError(
                f"data directory {data_dir} is not a readable folder; pass --data-dir DIR "
                f"holding the four {name} IDX files"
            )
        dirs += [d, d / name]
    env = os.environ.get("VAEKIT_DATA")
    if env:
        e = Path(os.path.expanduser(env))
        dirs += [e, e / name]
    dirs += [Path(p) for p in IDX_DATASETS[name]["system"]]
    dirs.append(cache_dir(name))
    return dirs


# --------------------------------------------------------------------------- download


def _download(url: str, dest: Path, md5: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != md5:
            raise VaekitError(
                f"{url}: checksum mismatch (md5 {h.hexdigest()}, expected {md5}); "
                f"retry later or pass --data-dir DIR holding the four IDX files"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fetch(name: str, searched: list[Path]) -> list[Path]:
    spec = IDX_DATASETS[name]
    target = cache_dir(name)
    try:
        for stem in IDX_FILES:
            if _find_file(target, stem) is None:
                fname = stem + ".gz"
                _download(spec["url"] + fname, target / fname, spec["md5"][fname])
    except VaekitError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        text = (str(reason).strip().splitlines() or [type(e).__name__])[0]
        where = ", ".join(str(d) for d in searched)
        raise VaekitError(f"{name} not found in {where} and download failed ({text}); {spec['hint']}") from None
    found = _find_set(target)
    assert found is not None
    return found


# --------------------------------------------------------------------------- loading


def load_idx_dataset(
    name: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    download: bool = True,
    val_size: int | None = None,
) -> DatasetSplits:
    """The splits of an IDX data set (`IDX_DATASETS`: 28x28 grey images, labels 0..9), found in
    `data_dir`, $VAEKIT_DATA, the system data folders or vaekit's cache, else downloaded if `download`;
    the images are zero-padded to 32 and the last training images held out for validation.
    """
    spec = IDX_DATASETS[name]
    check_val_size(val_size)
    if image_size not in (None, 28, 32):
        raise VaekitError(
            f"{name} images are 28x28 (zero-padded to 32); image size {image_size} is not "
            f"supported for it, use 28 or 32"
        )
    check_channels(channels)
    searched = _candidates(name, data_dir)
    files = None
    for d in searched:
        files = _find_set(d)
        if files:
            break
    if files is None:
        if not download:
            where = ", ".join(str(d) for d in searched)
            raise VaekitError(f"{name} not found in {where} (download disabled); {spec['hint']}")
        files = _fetch(name, searched)

    digest = hashlib.sha256()
    arrays = []
    for p in files:
        data = bytearray(read_idx_bytes(p))
        digest.update(data)
        arrays.append(parse_idx(data, str(p)))
    tr_x, tr_y, te_x, te_y = arrays
    for x, p in ((tr_x, files[0]), (te_x, files[2])):
        if x.ndim != 3 or x.shape[1] != 28 or x.shape[2] != 28:
            raise VaekitError(
                f"{p}: expected 28x28 images, found an IDX array of shape {x.shape}; "
                f"check that it is the {name} image file"
            )
    for y, x, p in ((tr_y, tr_x, files[1]), (te_y, te_x, files[3])):
        if y.ndim != 1 or len(y) != len(x):
            raise VaekitError(
                f"{p}: holds {y.shape[0] if y.ndim == 1 else y.shape} labels for {len(x)} "
                f"images; the label and image files do not belong together, re-download them"
            )
        if y.max() > 9:
            raise VaekitError(f"{p}: label {int(y.max())} out of range 0..9; re-download it")
    n_train = split_off_validation(len(tr_x), val_size, VAL_SIZE, str(files[0]))
    ch = channels or 1

    def subset(x: np.ndarray, y: np.ndarray) -> ImageSet:
        imgs = to_channels(x[:, None], ch)
        return ImageSet(pad_images(imgs, padded_size(28)), torch.from_numpy(y.astype(np.int64)))

    return DatasetSplits(
        name=name,
        train=subset(tr_x[:n_train], tr_y[:n_train]),
        val=subset(tr_x[n_train:], tr_y[n_train:]),
        test=subset(te_x, te_y),
        image_size=28,
        padded_size=padded_size(28),
        channels=ch,
        class_names=list(spec["classes"]),
        checksum=digest.hexdigest(),
        source=str(files[0].parent),
    )


def load_dataset(
    name: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    download: bool = True,
    seed: int = 0,
    val_size: int | None = None,
) -> DatasetSplits:
    """Load a dataset by name: fashion-mnist (default), mnist, digits, cifar10, folder:PATH or npz:PATH.

    `val_size` validation images are held out of the training images (None: the dataset's
    default, 5,000 of Fashion-MNIST's 60,000; a tenth of folder, npz and digits data); the
    test set is the same whatever it is.
    """
    name = (name or "fashion-mnist").strip()
    lower = name.lower()
    if lower.startswith("folder:"):
        return load_folder(name[len("folder:") :], image_size, channels, seed, val_size)
    if lower.startswith("npz:"):
        return load_npz(name[len("npz:") :], image_size, channels, seed, val_size)
    key = lower.replace("_", "-")
    if key in ("fashion-mnist", "fashionmnist"):
        return load_idx_dataset("fashion-mnist", data_dir, image_size, channels, download, val_size)
    if key == "mnist":
        return load_idx_dataset("mnist", data_dir, image_size, channels, download, val_size)
    if key == "digits":
        return load_digits(image_size, channels, seed, val_size)
    if key in ("cifar10", "cifar-10"):
        return load_cifar10(data_dir, image_size, channels, download, val_size)
    raise VaekitError(f"unknown dataset {name!r}; use one of {', '.join(DATASET_NAMES)}")
