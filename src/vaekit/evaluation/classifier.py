"""A small CNN classifier whose penultimate features measure sample quality offline.

Inception features (FID) need a download and were trained on photographs; a convnet
trained once on the data set's images outside its test split works offline and sees the
features that matter for this data. It is cached as safetensors (never pickle) under
$XDG_CACHE_HOME/vaekit/classifiers/<dataset checksum>.safetensors, one per data set: the
same whatever validation size the run that first needs it cut from the training images.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn
from tqdm import tqdm

from vaekit._version import __version__
from vaekit.atomic import atomic_write_bytes
from vaekit.data.common import cache_dir
from vaekit.errors import VaekitError

CLASSIFIER_SEED = 20240611  # fixed: the same cached classifier whatever the run's seed
# What the cached file was trained on; a file without it (an older vaekit trained on the first
# run's training split alone) is retrained.
TRAINED_ON = "every image outside the test split, in an order fixed by the images"


@dataclass(frozen=True)
class ClassifierSpec:
    """Size and training budget; the defaults reach ~91% on Fashion-MNIST in about a minute on 2 cores."""

    width: int = 16  # channels of the first conv; the second has twice as many
    features: int = 128  # the penultimate layer, where sample quality is measured
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3

    def tag(self) -> str:
        """'' for the default spec (the file is <checksum>.safetensors), else a short hash."""
        if self == ClassifierSpec():
            return ""
        return "-" + hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


class FeatureClassifier(nn.Module):
    """conv-BN-ReLU-pool twice, a ReLU feature layer, a linear head. Input: (N, C, H, W) in [0, 1]."""

    def __init__(self, channels: int, size: int, classes: int, width: int, features: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (size // 4) ** 2, features),
            nn.ReLU(),
        )
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate (ReLU) features (N, features) of images (N, C, H, W) in [0, 1]."""
        return self.body(x)  # (N, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, classes) of images (N, C, H, W) in [0, 1]."""
        return self.head(self.body(x))


@dataclass
class TrainedClassifier:
    """A feature classifier ready for sample-quality numbers, with its test accuracy and where it is cached."""

    net: FeatureClassifier
    accuracy: float  # on the test split, measured when it was trained
    path: Path
    spec: ClassifierSpec
    cached: bool  # loaded from the cache rather than trained now

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Penultimate features (N, F) of float images (N, C, H, W) in [0, 1] at the data's own size."""
        self.net.eval()
        return torch.cat(
            [self.net.features(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
        )

    def describe(self) -> dict:
        """What evaluation.json records about the classifier: its file, test accuracy, feature size,
        spec and whether it came from the cache.
        """
        return {
            "path": str(self.path),
            "test_accuracy": self.accuracy,
            "feature_size": self.spec.features,
            "spec": asdict(self.spec),
            "cached": self.cached,
        }


def data_pixels(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, C, P, P) padded tensors -> float (N, C, S, S) in [0, 1] without the zero frame."""
    border = (images.shape[-1] - image_size) // 2
    x = images[..., border : border + image_size, border : border + image_size]
    return x.float().div(255.0)


def cache_path(checksum: str, spec: ClassifierSpec) -> Path:
    """The classifier's file in vaekit's cache for a data set's `checksum` and `spec`."""
    safe = "".join(c for c in checksum if c.isalnum() or c in "-_.") or "unnamed"
    return cache_dir("classifiers") / f"{safe}{spec.tag()}.safetensors"


def get_classifier(data, spec: ClassifierSpec = ClassifierSpec(), progress: bool = True) -> TrainedClassifier:
    """The cached classifier for `data` (a DatasetSplits), training and caching it on first use."""
    if data.train.labels is None or data.test.labels is None:
        raise VaekitError(f"dataset {data.name} has no class labels; the sample-quality classifier needs them")
    classes = int(max(data.train.labels.max(), data.test.labels.max())) + 1
    path = cache_path(data.checksum, spec)
    shape = {"channels": data.channels, "image_size": data.image_size, "classes": classes}
    if path.is_file():
        loaded = _load(path, spec, shape)
        if loaded is not None:
            return loaded
    return _train_and_cache(data, spec, shape, path, progress)


def _build(spec: ClassifierSpec, shape: dict) -> FeatureClassifier:
    return FeatureClassifier(shape["channels"], shape["image_size"], shape["classes"], spec.width, spec.features)


def _load(path: Path, spec: ClassifierSpec, shape: dict) -> TrainedClassifier | None:
    """The cached net, or None (retrain) when the file is damaged or was made for another shape."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        info = json.loads(meta.get("vaekit_classifier", "{}"))
    except (SafetensorError, OSError, ValueError) as exc:
        print(f"vaekit: warning: cached classifier {path} is unreadable ({exc}); training a new one", file=sys.stderr)
        return None
    if info.get("shape") != shape or info.get("spec") != asdict(spec) or info.get("trained_on") != TRAINED_ON:
        return None
    net = _build(spec, shape)
    try:
        net.load_state_dict(tensors)
    except RuntimeError:
        return None
    return TrainedClassifier(net.eval(), float(info["test_accuracy"]), path, spec, cached=True)


def training_images(data) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's training set: the run's training and validation images (every image
    outside the test split, which no --val-size moves) with their labels, sorted by a hash of
    each image and its label, so that neither the split nor its order changes the classifier."""
    images = torch.cat([data.train.images, data.val.images])
    labels = torch.cat([data.train.labels, data.val.labels])
    weights = np.random.default_rng(CLASSIFIER_SEED).integers(0, 2**31, images[0].numel(), dtype=np.int64)
    key = images.flatten(1).numpy().astype(np.int64) @ weights  # < 2**31 * 255 * pixels: no overflow
    order = torch.from_numpy(np.lexsort((labels.numpy(), key)))
    return images[order], labels[order]


def _train_and_cache(data, spec: ClassifierSpec, shape: dict, path: Path, progress: bool) -> TrainedClassifier:
    images, y_train = training_images(data)
    x_train = data_pixels(images, data.image_size)
    with torch.random.fork_rng():  # leaves the caller's random stream untouched
        torch.manual_seed(CLASSIFIER_SEED)  # before the initial weights: they are drawn from it too
        net = _fit(_build(spec, shape), x_train, y_train, spec, progress)
    accuracy = accuracy_on(net, data_pixels(data.test.images, data.image_size), data.test.labels)
    info = {
        "shape": shape,
        "spec": asdict(spec),
        "test_accuracy": accuracy,
        "dataset": data.name,
        "checksum": data.checksum,
        "train_images": len(y_train),
        "trained_on": TRAINED_ON,
        "vaekit_version": __version__,
    }
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata={"vaekit_classifier": json.dumps(info)}))
    return TrainedClassifier(net.eval(), accuracy, path, spec, cached=False)


def _fit(
    net: FeatureClassifier, x: torch.Tensor, y: torch.Tensor, spec: ClassifierSpec, progress: bool
) -> FeatureClassifier:
    """Adam with a cosine-decayed rate: a few epochs reach the accuracy a long flat schedule would."""
    optimizer = torch.optim.Adam(net.parameters(), lr=spec.lr)
    steps_per_epoch = max(1, len(x) // spec.batch_size)
    total = spec.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    net.train()
    bar = tqdm(total=total, desc="classifier", disable=not progress, leave=False, dynamic_ncols=True)
    for _ in range(spec.epochs):
        order = torch.randperm(len(x))
        for i in range(steps_per_epoch):
            idx = order[i * spec.batch_size : (i + 1) * spec.batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
    bar.close()
    return net.eval()


@torch.no_grad()
def accuracy_on(net: FeatureClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """The fraction of images `x` that `net` (put in eval mode) assigns their labels `y`."""
    net.eval()
    correct = sum(
        int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum()) for i in range(0, len(x), batch_size)
    )
    return correct / max(1, len(x))
