"""Splitting a dataset into train/val/test, and holding out the validation images (--val-size)."""

from __future__ import annotations

import numpy as np
import torch

from vaekit.config import padded_size
from vaekit.errors import VaekitError

from .images import DatasetSplits, ImageSet, pad_images


def check_val_size(val_size: int | None) -> None:
    """Raises VaekitError unless `val_size` is None (the data set's default) or a positive int."""
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
