"""Datasets for vaekit: uint8 image tensors, padded to the network size, split into train/val/test."""

from .idx import read_idx
from .images import DatasetSplits, ImageSet
from .sources import DATASET_NAMES, load_dataset

__all__ = ["ImageSet", "DatasetSplits", "load_dataset", "read_idx", "DATASET_NAMES"]
