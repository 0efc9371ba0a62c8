"""The datasets that come through other packages: digits (scikit-learn) and cifar10 (torchvision)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from vaekit.config import padded_size
from vaekit.errors import VaekitError

from .common import cache_dir, one_line
from .images import DatasetSplits, ImageSet, check_channels, check_image_size, pad_images, resize_images, to_channels
from .splits import make_splits, split_off_validation


def load_digits(image_size: int | None, channels: int | None, seed: int, val_size: int | None = None) -> DatasetSplits:
    """The splits of scikit-learn's 8x8 digits (1,797 images, 0..16 grey levels), scaled to `image_size`
    and 0..255; needs scikit-learn (the `digits` extra).
    """
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


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_cifar10(
    data_dir: str | None, image_size: int | None, channels: int | None, download: bool, val_size: int | None = None
) -> DatasetSplits:
    """The splits of CIFAR-10 through torchvision, from `data_dir` or vaekit's cache (downloaded there if
    `download`): the last 5,000 (or `val_size`) training images are the validation set.
    """
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
            f"cifar10 could not be loaded from {root} ({one_line(e)}); check the network "
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
