"""The data's settings (`DataConfig`): which images, how they are split and binarised."""

from __future__ import annotations

from dataclasses import dataclass

from vaekit.config.settings import setting
from vaekit.errors import VaekitError

# Their images are 28 pixels whatever --image-size says, so their loader is not asked for a size.
FIXED_SIZE_DATASETS = ("fashion-mnist", "mnist")


@dataclass
class DataConfig:
    """Which images, and how they are split and binarised."""

    dataset: str = setting("fashion-mnist", "fashion-mnist (default), mnist, digits, cifar10, folder:PATH, npz:PATH")
    data_dir: str | None = setting(None, "folder holding the dataset files")
    train_subset: int | None = setting(None, "use only the first N training images")
    val_size: int | None = setting(
        None,
        "validation images held out of the training set (default: the dataset's, "
        "5000 of Fashion-MNIST's 60000; the literature's protocol is 10000)",
        metavar="N",
    )
    # Dynamic binarisation: a fresh bernoulli(x) per batch. RunConfig.resolved turns it off for
    # the likelihoods of grey levels (registered with data="grey"): choosing one implies --grey.
    binarize: bool = setting(True, "train on grey levels instead of dynamically binarised pixels", flag="--grey")

    def validate(self) -> DataConfig:
        """Raises VaekitError naming the first bad setting; returns self, unchanged."""
        if self.train_subset is not None and self.train_subset <= 0:
            raise VaekitError(f"--train-subset must be positive, got {self.train_subset}")
        if self.val_size is not None and (not isinstance(self.val_size, int) or self.val_size <= 0):
            raise VaekitError(f"--val-size must be a positive integer, got {self.val_size}")
        return self
