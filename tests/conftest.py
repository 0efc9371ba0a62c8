"""Shared fixtures: small generated data sets and tiny configurations, so tests stay fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.data.splits import make_splits

torch.set_num_threads(2)


def blob_images(n: int, size: int = 28, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images with structure a VAE can learn: a bright square whose position is the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = (rng.random((n, channels, size, size)) * 40).astype(np.uint8)
    half = size // 2
    for c in range(4):
        r, q = divmod(c, 2)
        sel = labels == c
        images[sel, :, r * half + 2 : r * half + half - 2, q * half + 2 : q * half + half - 2] = 230
    return images, labels


def make_tiny_splits(n: int = 240, size: int = 28, channels: int = 1, seed: int = 0):
    images, labels = blob_images(n, size, channels, seed)
    return make_splits(
        "blobs",
        images,
        labels,
        image_size=size,
        channels=channels,
        class_names=["tl", "tr", "bl", "br"],
        checksum=f"blobs-{n}-{size}-{channels}-{seed}",
        source="generated",
        seed=seed,
    )


@pytest.fixture
def tiny_splits():
    return make_tiny_splits()


def tiny_config(**overrides) -> RunConfig:
    """latent 4, batch 32, one epoch; override with model__x=..., train__y=..., data__z=..."""
    config = RunConfig(
        # The network and prior the tests were written on, from before the gated VampPrior defaults.
        ModelConfig(latent_size=4, image_size=28, width=128, blocks="plain", prior="normal"),
        DataConfig(dataset="blobs"),
        # A constant learning rate: tests that stop and resume change --epochs, which moves a cosine.
        # fp32, whatever the CPU: tests/test_precision.py checks bf16 against it.
        TrainConfig(epochs=1, batch_size=32, lr_schedule="constant", lr_warmup=0, kl_warmup=0, precision="fp32"),
    )
    for key, value in overrides.items():
        part, name = key.split("__")
        setattr(getattr(config, part), name, value)
    return config


@pytest.fixture
def graphs(monkeypatch):
    """The graphs torch.compile hands its backend, training's and evaluation's, with the mode
    they were traced in; the backend runs each as traced (no code generation), so a test of
    vaekit's use of compile takes seconds and gives the eager numbers bit for bit."""
    import functools

    from vaekit.models import speed
    from vaekit.training import step

    seen: list[dict] = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        seen.append({"inference_mode": torch.is_inference_mode_enabled(), "grad": torch.is_grad_enabled()})
        return gm.forward

    recording = functools.partial(speed.compile_networks, backend=backend)
    monkeypatch.setattr(step, "compile_networks", recording)
    monkeypatch.setattr(speed, "compile_networks", recording)
    torch._dynamo.reset()
    yield seen
    torch._dynamo.reset()
