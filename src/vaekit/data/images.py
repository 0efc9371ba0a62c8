"""The image containers (ImageSet, DatasetSplits) and the pixel helpers every loader shares: size and channel
checks, resizing, channel conversion and zero-padding to the network size."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vaekit.config import IMAGE_SIZES
from vaekit.errors import VaekitError


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
    """A data set split three ways (train, validation, test), with what a run records about it: the
    image size before and after padding, the channels, the class names (None without labels), a
    checksum of the source files and where they came from.
    """

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


def check_image_size(image_size: int | None, default: int = 32) -> int:
    """`image_size` (None: `default`) as an int; raises VaekitError unless it is one of `IMAGE_SIZES`."""
    size = default if image_size is None else int(image_size)
    if size not in IMAGE_SIZES:
        raise VaekitError(
            f"image size {size} is not supported; use one of "
            f"{', '.join(map(str, IMAGE_SIZES))} (28 is zero-padded to 32)"
        )
    return size


def check_channels(channels: int | None) -> None:
    """Raises VaekitError unless `channels` is None (the data's own), 1 (grey) or 3 (RGB)."""
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
