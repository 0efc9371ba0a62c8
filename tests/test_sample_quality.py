"""Fréchet distance against closed forms, k-NN precision/recall on constructed point sets,
and the cached feature classifier on generated data."""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from conftest import blob_images, make_tiny_splits
from vaekit.config import ModelConfig
from vaekit.data.splits import make_splits
from vaekit.evaluation.classifier import ClassifierSpec, cache_path, data_pixels, get_classifier
from vaekit.evaluation.evaluate import sample_quality
from vaekit.evaluation.sample_quality import (
    frechet_distance,
    frechet_distance_features,
    gaussian_stats,
    precision_recall,
)
from vaekit.models.vae import VAE

TINY = ClassifierSpec(width=4, features=16, epochs=3, batch_size=32, lr=5e-3)


def _random_cov(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, -1.0, 2.0])
    v1, v2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    # diagonal: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(v1) - sqrt(v2))^2
    expected = float((mu1 - mu2).pow(2).sum() + (v1.sqrt() - v2.sqrt()).pow(2).sum())
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(1 + 4 + 1 + 1)


def test_frechet_distance_of_full_covariances_matches_scipy_sqrtm():
    s1, s2 = _random_cov(6, 0), _random_cov(6, 1)
    mu1, mu2 = torch.arange(6.0, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    cross = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real  # an independent matrix square root
    expected = float((mu1 - mu2).pow(2).sum()) + float(np.trace(s1.numpy() + s2.numpy() - 2 * cross))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_from_samples_approaches_the_population_value():
    g = torch.Generator().manual_seed(0)
    s1, s2 = _random_cov(4, 2), _random_cov(4, 3)
    mu2 = torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    a = torch.randn(200_000, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    b = torch.randn(200_000, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s2).T + mu2
    population = frechet_distance(torch.zeros(4), s1, mu2, s2)
    assert frechet_distance_features(a, b) == pytest.approx(population, abs=0.03)
    mu, cov = gaussian_stats(a)
    torch.testing.assert_close(cov, s1, atol=0.03, rtol=0)


def test_precision_recall_of_identical_sets_is_one():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(200, 8, generator=g), torch.randn(150, 8, generator=g) + 100.0
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_and_recall_separate_fidelity_from_coverage():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(400, 2, generator=g)
    # fake = half of the real set plus as many far-away points: precision 1/2, recall below 1
    fake = torch.cat([real[:200], torch.randn(200, 2, generator=g) + 50.0])
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == pytest.approx(0.5, abs=0.02)
    assert 0.3 < recall < 1.0
    # a collapsed model (all samples near one real point) is precise but covers nothing
    collapsed = real[:1] + 1e-3 * torch.randn(100, 2, generator=g)
    p2, r2 = precision_recall(real, collapsed, k=3)
    assert p2 == 1.0 and r2 < 0.05


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_classifier_is_trained_once_then_loaded_from_safetensors(cache):
    data = make_tiny_splits(400)
    first = get_classifier(data, TINY, progress=False)
    assert not first.cached and first.accuracy >= 0.9  # four well-separated blob classes
    path = cache_path(data.checksum, TINY)
    assert first.path == path and path.parent == cache / "vaekit" / "classifiers"
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    second = get_classifier(data, TINY, progress=False)
    assert second.cached and second.accuracy == first.accuracy
    x = data_pixels(data.test.images, data.image_size)
    torch.testing.assert_close(first.features(x), second.features(x))


def test_classifier_is_the_same_whatever_validation_size_or_random_state_the_first_run_had(cache, monkeypatch):
    images, labels = blob_images(400, 28, 1, 0)

    def splits(val_size):
        return make_splits(
            "blobs",
            images,
            labels,
            image_size=28,
            channels=1,
            class_names=None,
            checksum="blobs-400",
            source="generated",
            seed=0,
            val_size=val_size,
        )

    small, large = splits(10), splits(120)
    assert len(small.train.images) != len(large.train.images)
    torch.testing.assert_close(small.test.images, large.test.images)
    torch.manual_seed(1)  # nor the caller's random state
    first = get_classifier(small, TINY, progress=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache.parent / "another-cache"))
    torch.manual_seed(2)
    second = get_classifier(large, TINY, progress=False)
    assert not first.cached and not second.cached and first.path != second.path
    for (name, a), b in zip(first.net.state_dict().items(), second.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_classifier_cached_by_an_older_vaekit_is_retrained(cache):
    data = make_tiny_splits(400)
    first = get_classifier(data, TINY, progress=False)
    with safe_open(str(first.path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["vaekit_classifier"])
    del info["trained_on"]  # what a file trained on the first run's training split alone holds
    first.path.write_bytes(safetensors_bytes(tensors, metadata={"vaekit_classifier": json.dumps(info)}))
    assert not get_classifier(data, TINY, progress=False).cached
    assert get_classifier(data, TINY, progress=False).cached


def test_default_spec_is_keyed_by_the_checksum_alone(cache):
    assert cache_path("abc", ClassifierSpec()).name == "abc.safetensors"
    assert cache_path("abc", TINY).name.startswith("abc-")


def test_damaged_cache_file_is_retrained(cache, capsys):
    data = make_tiny_splits(400)
    path = cache_path(data.checksum, TINY)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    assert not get_classifier(data, TINY, progress=False).cached
    assert "unreadable" in capsys.readouterr().err


def test_sample_quality_is_reproducible_and_has_a_floor(cache):
    data = make_tiny_splits(400)
    classifier = get_classifier(data, TINY, progress=False)
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=4, image_size=28)).eval()
    one = sample_quality(model, data, classifier, n=30, seed=5)
    two = sample_quality(model, data, classifier, n=30, seed=5)
    assert one == two
    assert one["samples"] == 30 and one["k"] == 3
    floor, untrained = one["train_vs_test_floor"], one["model_vs_test"]
    # training images look like test images; an untrained decoder's grey blur does not
    assert floor["frechet_distance"] < untrained["frechet_distance"]
    assert floor["precision"] > untrained["precision"]
    assert all(math.isfinite(v) for v in floor.values())
