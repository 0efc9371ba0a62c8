"""Sample-quality numbers on feature vectors: Fréchet distance and k-NN precision/recall.

Plain functions of two (N, F) feature matrices, so they can be checked against closed forms
and constructed point sets; `classifier.py` supplies the features.
"""

from __future__ import annotations

import torch


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, F), in float64."""
    f = features.double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix via its eigendecomposition."""
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) between two Gaussians.

    S1 S2 is not symmetric, but it is similar to A S2 A with A = S1^{1/2}, which is
    symmetric PSD; so tr((S1 S2)^{1/2}) is the sum of the square roots of A S2 A's
    eigenvalues. That keeps everything in eigh (no scipy, no complex sqrtm round-off).
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    eig = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp(min=0)
    d = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * eig.sqrt().sum()
    return float(d.clamp(min=0))


def frechet_distance_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F)."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def _kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point in the same set: (N,)."""
    if features.shape[0] <= k:
        raise ValueError(f"need more than k={k} points for k-NN radii, got {features.shape[0]}")
    out = []
    for start in range(0, features.shape[0], chunk):
        d = torch.cdist(features[start : start + chunk], features)  # (c, N)
        # k+1 smallest: the first is the point itself (distance 0)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _fraction_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Fraction of `points` inside at least one ball (centre_i, radius_i)."""
    inside = []
    for start in range(0, points.shape[0], chunk):
        d = torch.cdist(points[start : start + chunk], centres)  # (c, M)
        inside.append((d <= radii).any(1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls reaching every point's k-th nearest
    neighbour. Precision: fraction of fake points on the real manifold (are samples
    realistic?). Recall: fraction of real points on the fake manifold (is the data covered?).
    """
    real, fake = real.float(), fake.float()
    precision = _fraction_inside(fake, real, _kth_neighbour_radii(real, k, chunk), chunk)
    recall = _fraction_inside(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk)
    return precision, recall


def quality_numbers(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Fréchet distance and k-NN precision/recall of `fake` features against `real` ones."""
    precision, recall = precision_recall(real, fake, k)
    return {"frechet_distance": frechet_distance_features(real, fake), "precision": precision, "recall": recall}
