"""How many mixture components of q(z|x) a model uses, from the posterior weights of many images."""

from __future__ import annotations

import math

import torch

# The metrics.csv columns that runs with K > 1 add, in this order.
USAGE_COLUMNS = ["usage_entropy", "usage_image_entropy", "usage_effective"]


def component_usage(weights: torch.Tensor) -> dict[str, float | list[float]]:
    """Summaries of posterior mixture weights `weights` (N, K), one row per image:

    - mean_weights: the weights averaged over the images, (K,);
    - usage_entropy: the entropy of those mean weights (nats; log K when all K are used equally);
    - usage_image_entropy: the mean over images of each image's weight entropy (0 when every image
      puts all its weight on one component, even if different images pick different ones);
    - usage_effective: exp(usage_entropy), the effective number of components in use.
    """
    if weights.dim() != 2 or weights.shape[0] == 0:
        raise ValueError(f"weights must be (N, K) with N > 0, got {tuple(weights.shape)}")
    w = weights.double()
    mean_w = w.mean(0)
    entropy = float(_entropy(mean_w))
    return {
        "mean_weights": [float(v) for v in mean_w],
        "usage_entropy": entropy,
        "usage_image_entropy": float(_entropy(w).mean()),
        "usage_effective": math.exp(entropy),
    }


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the last dimension, with 0 log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(-1)


@torch.no_grad()
def posterior_weights(model, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """q(z|x)'s mixture weights (N, K) for float images (N, C, S, S), in eval mode."""
    was_training = model.training
    model.eval()
    weights = [model.encode(images[i : i + batch_size]).weights.double() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(weights)
