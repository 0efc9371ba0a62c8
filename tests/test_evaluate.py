"""The importance-sampled NLL: a bound above the ELBO that tightens with S, checked against
brute-force quadrature of log p(x); and the evaluation record of a run."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vaekit.models.precision
from conftest import make_tiny_splits, tiny_config
from vaekit.config import ModelConfig
from vaekit.errors import VaekitError
from vaekit.evaluation.evaluate import (
    EVAL_BINARIZE_SEED,
    evaluate_model,
    evaluate_run,
    log_likelihood_estimate,
    number_kind,
)
from vaekit.evaluation.per_image import PER_IMAGE_FILE, arrays_sha256, indices_sha256, read_per_image
from vaekit.models.fast_modules import twin
from vaekit.models.precision import AutocastNetwork, autocast_networks
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import elbo_terms
from vaekit.objectives.decoding import CPU_PIECE_IMAGES
from vaekit.runs.checkpoint import resolve_pointer
from vaekit.training.loop import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A K=2 model trained briefly on blobs: a posterior that is not the prior, quickly."""
    data = make_tiny_splits(240)
    out = tmp_path_factory.mktemp("runs") / "run"
    torch.manual_seed(0)
    train(tiny_config(model__components=2, model__width=256, train__epochs=2), out=out, data=data, progress=False)
    return out, data


@pytest.fixture(scope="module")
def tiny_model(tiny_run):
    from vaekit.runs.run_dir import load_run

    return load_run(tiny_run[0]).model


def _binary_batch(data, n=16):
    from vaekit.data.batching import binarize_fixed

    return binarize_fixed(data.test.images[:n], EVAL_BINARIZE_SEED)


def test_iwae_is_never_below_the_elbo_on_the_same_images(tiny_model, tiny_run):
    x = _binary_batch(tiny_run[1])
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([elbo_terms(tiny_model, x).elbo for _ in range(20)]).mean(0)  # (B,)
        log_px = log_likelihood_estimate(tiny_model, x, samples=200)
    assert log_px.mean() >= elbo.double().mean()
    assert (-log_px > 0).all()  # a positive NLL for binary images


def test_estimate_tightens_as_samples_grow(tiny_model, tiny_run):
    x = _binary_batch(tiny_run[1])
    means = {}
    with torch.no_grad():
        for s in (1, 10, 100):
            # averaged over seeds and images: E[log p_S] increases with S (Burda et al. 2016, thm 1)
            runs = []
            for seed in range(4):
                torch.manual_seed(seed)
                runs.append(log_likelihood_estimate(tiny_model, x, samples=s).mean())
            means[s] = float(torch.stack(runs).mean())
    assert means[1] < means[10] + 0.05 and means[10] < means[100] + 0.05
    assert means[100] - means[1] > 0.1  # and it moves


def _quadrature_log_px(model, x: torch.Tensor, grid: int = 1201, half_width: float = 8.0) -> torch.Tensor:
    """log ∫ p(x|z) p(z) dz for D=1 by the trapezoid rule on a float64 grid: independent of q."""
    z = torch.linspace(-half_width, half_width, grid, dtype=torch.float64)[:, None]  # (G, 1)
    log_px_z = model.decode(z[:, None, :]).log_prob(model.crop(x))  # one decode per z, broadcast over x: (G, B)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z)  # (G, 1)
    log_w = torch.log(torch.full((grid, 1), z[1, 0] - z[0, 0], dtype=torch.float64))
    log_w[[0, -1]] -= math.log(2)  # trapezoid end weights
    return torch.logsumexp(log_px_z + log_pz + log_w, 0)


@pytest.mark.parametrize("components", [1, 3])
def test_estimator_matches_brute_force_quadrature_in_one_dimension(components):
    torch.manual_seed(components)
    # The quadrature integrates against N(0, 1): the model's prior must be that.
    config = tiny_config(model__latent_size=1, model__components=components, model__width=32).model
    model = VAE(config).double().eval()
    x = torch.bernoulli(torch.rand(2, 1, 32, 32, dtype=torch.float64) * 0.6)
    with torch.no_grad():
        # At initialisation p(x|z) hardly depends on z (0.03 nats over z in [-3, 3]), so any
        # estimator would pass: a 100x first layer makes it move by nats.
        first = next(m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d))
        first.weight.mul_(100)
        log_px_z = model.decode(torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None, None]).log_prob(model.crop(x))
        assert (log_px_z.amax(0) - log_px_z.amin(0)).min() > 1.0
        exact = _quadrature_log_px(model, x)
        torch.manual_seed(0)
        estimate = log_likelihood_estimate(model, x, samples=1000, chunk=2000)
    torch.testing.assert_close(estimate, exact, atol=0.05, rtol=0)


def test_samples_are_batched_not_looped_per_image(tiny_model, tiny_run):
    x = _binary_batch(tiny_run[1], 16)
    calls = []
    handle = tiny_model.decoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        with torch.no_grad():
            log_likelihood_estimate(tiny_model, x, samples=50, chunk=320)
    finally:
        handle.remove()
    # 320 // 16 = 20 samples per chunk for all 16 images at once, each chunk decoded in pieces
    # of 200 // 16 = 12 samples (decoding.CPU_PIECE_IMAGES): 50 samples are 12+8, 12+8, 10.
    assert CPU_PIECE_IMAGES == 200
    assert sorted(calls) == sorted([16 * 12, 16 * 8, 16 * 12, 16 * 8, 16 * 10])


def test_evaluate_model_reports_means_errors_bits_and_usage(tiny_model, tiny_run):
    data = tiny_run[1]
    result = evaluate_model(tiny_model, data.test.images, binarize=True, samples=20, batch_size=7, progress=False)
    test = result["test"]
    assert set(test) == {"elbo", "recon", "kl", "nll", "bits_per_dim"}
    assert result["images"] == len(data.test)
    assert test["nll"]["mean"] > 0 and test["nll"]["stderr"] > 0
    assert -test["nll"]["mean"] >= test["elbo"]["mean"] - 3 * test["elbo"]["stderr"]
    assert test["bits_per_dim"]["mean"] == pytest.approx(test["nll"]["mean"] / (28 * 28 * math.log(2)))
    assert test["elbo"]["mean"] == pytest.approx(test["recon"]["mean"] - test["kl"]["mean"])
    assert 0 <= result["active_units"]["count"] <= 4 == result["active_units"]["of"]
    weights = result["components"]["mean_weights"]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1.0)
    assert 0 <= result["components"]["entropy_of_mean_weights"] <= math.log(2) + 1e-9
    assert result["components"]["effective_components"] == pytest.approx(
        math.exp(result["components"]["entropy_of_mean_weights"])
    )
    assert (
        0 <= result["components"]["mean_image_entropy"] <= result["components"]["entropy_of_mean_weights"] + 1e-9
    )  # concavity
    assert result["nll_is_likelihood"]


def test_evaluate_run_writes_a_reproducible_record(tiny_run, tmp_path):
    run, data = tiny_run
    extra = tmp_path / "copy.json"
    first = evaluate_run(
        run, samples=10, test_subset=12, batch_size=5, json_path=extra, data=data, quality=False, progress=False
    )
    saved = json.loads((run / "evaluation.json").read_text())
    assert json.loads(extra.read_text()) == saved
    second = evaluate_run(run, samples=10, test_subset=12, batch_size=5, data=data, quality=False, progress=False)
    assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in second.items() if k != "seconds"}
    settings = saved["settings"]
    assert settings["nll_samples"] == 10 and settings["test_images"] == 12 and settings["test_subset"] == 12
    assert settings["binarize_seed"] == EVAL_BINARIZE_SEED and settings["vaekit_version"]
    assert "binarised once" in saved["number_kind"]
    assert (run / "latent_scatter.png").is_file() and (run / "component_usage.png").is_file()


def test_evaluate_run_saves_per_image_numbers_and_the_protocol(tiny_run):
    run, data = tiny_run
    result = evaluate_run(
        run, samples=8, test_subset=12, batch_size=5, data=data, quality=False, progress=False, seed=3
    )
    with np.load(run / PER_IMAGE_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert set(arrays) == {"index", "nll", "elbo"} and arrays["index"].tolist() == list(range(12))
    assert arrays["nll"].dtype == np.float64 and arrays["elbo"].shape == (12,)
    assert arrays["nll"].mean() == pytest.approx(result["test"]["nll"]["mean"])
    assert arrays["elbo"].mean() == pytest.approx(result["test"]["elbo"]["mean"])
    assert arrays["nll"].std(ddof=1) / math.sqrt(12) == pytest.approx(result["test"]["nll"]["stderr"])
    settings = json.loads((run / "evaluation.json").read_text())["settings"]
    assert settings["test_selection"] == f"first 12 of {len(data.test)}" and settings["test_set_size"] == len(data.test)
    assert settings["test_indices_sha256"] == indices_sha256(np.arange(12))
    assert settings["nll_samples"] == 8 and settings["sampling_seed"] == 3 and settings["checkpoint"] == "best"
    assert settings["binarize_seed"] == EVAL_BINARIZE_SEED and settings["dataset"] == "blobs"
    record = json.loads((run / "evaluation.json").read_text())["per_image"]
    assert record["file"] == PER_IMAGE_FILE and set(record["arrays"]) == {"index", "nll", "elbo"}
    assert record["arrays_sha256"] == arrays_sha256(read_per_image(run / PER_IMAGE_FILE))
    evaluate_run(run, samples=8, data=data, quality=False, progress=False)
    assert json.loads((run / "evaluation.json").read_text())["settings"]["test_selection"] == f"all {len(data.test)}"
    assert len(read_per_image(run / PER_IMAGE_FILE).index) == len(data.test)


def test_evaluate_run_reads_the_checkpoint_asked_for(tiny_run, tmp_path):
    # A run whose budget ended mid-epoch: "latest" holds later weights than "best". Here the later
    # checkpoint is the best one with halved weights, so the two must give different numbers.
    run, data = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    root = copy / "checkpoints"
    best = resolve_pointer(root, "best")
    later = root / "step-000999999"
    shutil.copytree(best, later)
    state = json.loads((later / "state.json").read_text())
    best_step, state["step"] = state["step"], 999_999
    (later / "state.json").write_text(json.dumps(state))
    weights = load_file(str(later / "model.safetensors"))
    save_file(
        {k: v * 0.5 if v.is_floating_point() else v for k, v in weights.items()}, str(later / "model.safetensors")
    )
    (root / "latest").write_text(later.name)
    settings = dict(samples=8, test_subset=10, batch_size=5, data=data, quality=False, progress=False)
    as_best = evaluate_run(copy, **settings)
    as_latest = evaluate_run(copy, checkpoint="latest", **settings)
    assert (as_best["settings"]["checkpoint"], as_best["settings"]["checkpoint_step"]) == ("best", best_step)
    assert (as_latest["settings"]["checkpoint"], as_latest["settings"]["checkpoint_step"]) == ("latest", 999_999)
    assert as_latest["test"]["nll"]["mean"] != pytest.approx(as_best["test"]["nll"]["mean"], abs=1e-3)
    with pytest.raises(VaekitError, match="--checkpoint must be 'best' or 'latest'"):
        evaluate_run(copy, checkpoint="final", **settings)


def test_grey_bernoulli_numbers_are_not_called_a_likelihood():
    kind, is_likelihood = number_kind("bernoulli", binarized=False)
    assert not is_likelihood and "NOT a likelihood" in kind
    assert number_kind("bernoulli", binarized=True)[1]
    assert number_kind("logistic", binarized=False)[1]


def _independent_cpu_draw(images: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.bernoulli(images.float() / 255, generator=torch.Generator().manual_seed(seed))


def test_the_fixed_binarisation_is_one_cpu_draw_with_the_fixed_seed():
    from vaekit.data.batching import binarize_fixed

    images = make_tiny_splits(60).test.images
    assert torch.equal(binarize_fixed(images, EVAL_BINARIZE_SEED), _independent_cpu_draw(images, EVAL_BINARIZE_SEED))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_fixed_binarisation_does_not_depend_on_the_device():
    from vaekit.data.batching import binarize_fixed

    images = make_tiny_splits(60).test.images
    on_gpu = binarize_fixed(images.cuda(), EVAL_BINARIZE_SEED)
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), _independent_cpu_draw(images, EVAL_BINARIZE_SEED))


def _record_autocast(monkeypatch) -> list[bool]:
    """The `enabled` of every autocast a network enters: what the networks would run in on a GPU."""
    seen, real = [], vaekit.models.precision.network_autocast
    monkeypatch.setattr(
        vaekit.models.precision,
        "network_autocast",
        lambda device, enabled=True: (seen.append(enabled), real(device, enabled))[1],
    )
    return seen


def _autocast_networks(model, seen: list[bool]) -> None:
    """As training does on CUDA; checks that the recorder sees the networks' autocast."""
    autocast_networks(model)
    with torch.no_grad():
        model.encode(torch.zeros(1, 1, 32, 32))
    assert seen == [True]
    seen.clear()


def _plain_networks(model) -> None:
    for name in ("encoder", "decoder"):
        network = getattr(model, name)
        setattr(model, name, twin(network, network.plain_class))


def test_validation_runs_the_networks_in_fp32_and_restores_autocast(tiny_model, tiny_run, monkeypatch):
    from vaekit.training.validation import bound_means

    images = tiny_run[1].val.images
    fp32 = bound_means(tiny_model, images, 16, True, 1234)
    seen = _record_autocast(monkeypatch)
    _autocast_networks(tiny_model, seen)
    try:
        got = bound_means(tiny_model, images, 16, True, 1234)
        assert isinstance(tiny_model.encoder, AutocastNetwork) and isinstance(tiny_model.decoder, AutocastNetwork)
    finally:
        _plain_networks(tiny_model)
    assert not seen  # the networks ran without autocast
    assert got == fp32


@pytest.mark.parametrize("fast", [False, True])
def test_evaluation_runs_the_networks_in_fp32_and_restores_autocast(fast, tiny_model, tiny_run, monkeypatch):
    images = tiny_run[1].test.images[:10]
    settings = dict(binarize=True, samples=4, batch_size=5, progress=False, fast=fast)
    fp32 = evaluate_model(tiny_model, images, **settings)
    seen = _record_autocast(monkeypatch)
    _autocast_networks(tiny_model, seen)
    try:
        got = evaluate_model(tiny_model, images, **settings)
        assert isinstance(tiny_model.encoder, AutocastNetwork) and isinstance(tiny_model.decoder, AutocastNetwork)
    finally:
        _plain_networks(tiny_model)
    assert not seen
    assert got == fp32


@pytest.mark.parametrize(
    "likelihood, binarize, has_bits",
    [
        ("bernoulli", True, True),
        ("logistic", False, True),
        ("gaussian", False, False),
        ("continuous-bernoulli", False, False),
        ("bernoulli", False, False),
    ],
)
def test_bits_per_dim_only_for_the_probability_of_discrete_data(likelihood, binarize, has_bits):
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=2, width=32, likelihood=likelihood, image_size=28)).eval()
    result = evaluate_model(
        model, make_tiny_splits(60).test.images[:6], binarize=binarize, samples=3, batch_size=6, progress=False
    )
    bits = result["test"]["bits_per_dim"]
    if has_bits:
        assert bits["mean"] == pytest.approx(result["test"]["nll"]["mean"] / (28 * 28 * math.log(2)))
        assert "no bits/dim" not in result["number_kind"]
    else:
        assert bits is None and "no bits/dim is given" in result["number_kind"]
    assert json.loads(json.dumps(result))["test"]["bits_per_dim"] == bits  # null in evaluation.json
