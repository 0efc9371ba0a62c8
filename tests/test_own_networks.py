"""A user's own encoder and decoder: trained by vaekit.train, reloaded, evaluated; the default
networks unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import vaekit
from conftest import make_tiny_splits, tiny_config
from vaekit.config import RunConfig
from vaekit.distributions.likelihoods import make_likelihood
from vaekit.distributions.priors import make_prior
from vaekit.errors import VaekitError
from vaekit.evaluation.evaluate import evaluate_model, evaluate_run
from vaekit.models.networks import ConvDecoder, ConvEncoder
from vaekit.models.speed import inference_model
from vaekit.models.vae import VAE, decoder_channels
from vaekit.report.page import write_report
from vaekit.report.pictures import ensure_pictures
from vaekit.runs.run_dir import load_run, read_metrics

# Three channels and grey levels: a channels_last batch (binarising happens to return a
# contiguous one) cannot be .view()ed, so the encoder below would fail on one.
CHANNELS = 3


class MLPEncoder(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        s, self.k, self.d = config.padded_size, config.components, config.latent_size
        self.body = nn.Sequential(nn.Linear(config.channels * s * s, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.head = nn.Linear(32, self.k * (2 * self.d + 1))

    def forward(self, x: torch.Tensor):
        out = self.head(self.body(x.view(len(x), -1)))
        kd = self.k * self.d
        return out[:, :kd].view(-1, self.k, self.d), out[:, kd : 2 * kd].view(-1, self.k, self.d), out[:, 2 * kd :]


class MLPDecoder(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        s = config.padded_size
        self.shape = (decoder_channels(config), s, s)
        self.net = nn.Sequential(nn.Linear(config.latent_size, 32), nn.ReLU(), nn.Linear(32, math.prod(self.shape)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)


def own_config(**overrides) -> RunConfig:
    return tiny_config(
        model__channels=CHANNELS, model__components=2, data__binarize=False, train__epochs=2, **overrides
    )


def own_model(config: RunConfig, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(config.model, encoder=MLPEncoder(config.model), decoder=MLPDecoder(config.model))


def networks(config: RunConfig) -> dict:
    return {"encoder": MLPEncoder(config.model), "decoder": MLPDecoder(config.model)}


@pytest.fixture(scope="module")
def data():
    return make_tiny_splits(channels=CHANNELS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """(config, the model trained in place, its run directory, its initial weights)."""
    config = own_config()
    model = own_model(config)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    run_dir = vaekit.train(config, model=model, out=tmp_path_factory.mktemp("own") / "run", data=data, progress=False)
    return config, model, run_dir, initial


def test_default_networks_are_built_as_before() -> None:
    """The same seed gives the weights of today's construction order, and passing the
    default-built networks explicitly changes nothing but the recorded class names."""
    config = tiny_config(model__components=3, model__prior="vamp").model
    torch.manual_seed(0)
    default = VAE(config)
    assert default.config is config and not default.custom_networks and config.custom_encoder is None
    torch.manual_seed(0)  # the construction order VAE used before it took networks
    size = config.padded_size
    reference = {"encoder": ConvEncoder(config.channels, size, config.latent_size, config.components, config.width)}
    likelihood = make_likelihood(config)
    reference["decoder"] = ConvDecoder(likelihood.param_channels, size, config.latent_size, config.width)
    reference["prior_net"] = make_prior(config)
    expected = {f"{name}.{k}": v for name, module in reference.items() for k, v in module.state_dict().items()}
    got = default.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)

    torch.manual_seed(0)
    explicit = VAE(
        config,
        encoder=ConvEncoder(config.channels, size, config.latent_size, config.components, config.width),
        decoder=ConvDecoder(likelihood.param_channels, size, config.latent_size, config.width),
    )
    assert (
        explicit.config.custom_encoder == "ConvEncoder" and config.custom_encoder is None
    )  # the caller's config is not edited
    assert all(torch.equal(v, explicit.state_dict()[k]) for k, v in got.items())
    x = torch.rand(5, config.channels, size, size)
    default.eval(), explicit.eval()
    with torch.no_grad():
        torch.testing.assert_close(explicit.encode(x).mean, default.encode(x).mean, rtol=0, atol=0)
        z = torch.randn(5, config.latent_size)
        torch.testing.assert_close(explicit.decode(z).logits, default.decode(z).logits, rtol=0, atol=0)


def test_old_configs_load_with_the_built_in_networks() -> None:
    data = tiny_config().to_dict()
    del (
        data["model"]["custom_encoder"],
        data["model"]["custom_decoder"],
    )  # a config.json written before the fields existed
    model = RunConfig.from_dict(data).model
    assert (model.custom_encoder, model.custom_decoder, model.custom_networks) == (None, None, False)


def test_trained_run_records_its_networks_and_reloads_to_the_same_outputs(trained, data) -> None:
    config, model, run_dir, initial = trained
    saved = json.loads((Path(run_dir) / "config.json").read_text())["model"]
    assert (saved["custom_encoder"], saved["custom_decoder"]) == ("MLPEncoder", "MLPDecoder")
    assert any(not torch.equal(initial[k], v) for k, v in model.state_dict().items()), (
        "training did not change the weights"
    )
    assert len(vaekit.runs.run_dir.read_metrics(run_dir)) == 2

    run = load_run(run_dir, "latest", **networks(config))  # latest: the weights the model ended with
    assert isinstance(run.model.encoder, MLPEncoder) and isinstance(run.model.decoder, MLPDecoder)
    model.eval()
    x = data.test.images[:16].float().div(255)
    with torch.no_grad():
        q_trained, q_loaded = model.encode(x), run.model.encode(x)
        for a, b in (
            (q_trained.loc, q_loaded.loc),
            (q_trained.scale, q_loaded.scale),
            (q_trained.logits, q_loaded.logits),
        ):
            torch.testing.assert_close(b, a, rtol=0, atol=0)
        z = torch.randn(8, config.model.latent_size)
        torch.testing.assert_close(run.model.decode(z).logits, model.decode(z).logits, rtol=0, atol=0)
        torch.manual_seed(3)
        sampled = run.model.sample(4)
    assert sampled.shape == (4, CHANNELS, 28, 28) and torch.isfinite(sampled).all()


def test_loading_without_the_networks_is_one_line_that_says_what_to_pass(trained, capsys) -> None:
    _, _, run_dir, _ = trained
    with pytest.raises(VaekitError) as info:
        load_run(run_dir)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "encoder MLPEncoder" in message and "decoder MLPDecoder" in message and "encoder=..., decoder=..." in message
    from vaekit.cli.main import main

    assert main(["sample", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "MLPEncoder" in err and "Traceback" not in err


def test_evaluation_sampling_and_the_report_work_on_the_run(trained, data) -> None:
    config, _, run_dir, _ = trained
    run = load_run(run_dir, **networks(config))
    result = evaluate_model(run.model, data.test.images[:20], binarize=True, samples=8, progress=False, fast=True)
    assert math.isfinite(result["test"]["nll"]["mean"]) and result["test"]["nll"]["mean"] > 0
    plain = evaluate_model(run.model, data.test.images[:20], binarize=True, samples=8, progress=False, fast=False)
    assert result["test"]["nll"]["mean"] == pytest.approx(
        plain["test"]["nll"]["mean"], rel=1e-5
    )  # the speed path gives the same numbers

    out = evaluate_run(run_dir, samples=4, test_subset=10, data=data, quality=False, progress=False, **networks(config))
    assert math.isfinite(out["test"]["nll"]["mean"]) and "channels_last" not in out["settings"]["network_path"]
    ensure_pictures(run_dir, data=data, **networks(config))
    assert (Path(run_dir) / "interpolations.png").is_file() and (Path(run_dir) / "latent_scatter.png").is_file()
    assert "MLPEncoder" in write_report(run_dir).read_text()


def test_resuming_needs_the_model_and_then_replays_exactly(trained, data, tmp_path) -> None:
    _, model, full_run, _ = trained
    config = own_config()
    config.train.epochs = 1
    run_dir = vaekit.train(config, model=own_model(config), out=tmp_path / "run", data=data, progress=False)
    config = RunConfig.load(Path(run_dir) / "config.json")
    config.train.epochs = 2
    with pytest.raises(VaekitError, match=r"own networks \(encoder MLPEncoder, decoder MLPDecoder\).*model=vaekit.VAE"):
        vaekit.train(config, resume=run_dir, data=data, progress=False)
    vaekit.train(
        config, model=own_model(config, seed=1), resume=run_dir, data=data, progress=False
    )  # its initial weights are replaced
    resumed = load_run(run_dir, "latest", **networks(config)).model.state_dict()
    uninterrupted = load_run(full_run, "latest", **networks(config)).model.state_dict()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_train_refuses_a_model_built_for_another_config(data, tmp_path) -> None:
    config = own_config()
    model = own_model(tiny_config(model__channels=CHANNELS, model__components=2, model__latent_size=6))
    with pytest.raises(VaekitError, match=r"latent_size=6 but the config .* has 4"):
        vaekit.train(config, model=model, out=tmp_path / "run", data=data, progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(VaekitError, match="model= must be a vaekit.VAE"):
        vaekit.train(config, model=MLPEncoder(config.model), out=tmp_path / "run", data=data, progress=False)


class Wrong(nn.Module):
    """An encoder that forgot the component dimension."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.d = d
        self.net = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor):
        b = len(x)
        return torch.zeros(b, self.d), torch.zeros(b, self.d), torch.zeros(b, 2)


def test_wrong_shapes_are_refused_with_what_was_expected() -> None:
    config = own_config().model
    model = VAE(config, encoder=Wrong(config.latent_size), decoder=MLPDecoder(config))
    with pytest.raises(VaekitError) as info:
        model.encode(torch.rand(5, CHANNELS, 32, 32))
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "Wrong returned (5, 4), (5, 4), (5, 2)" in message and "(5, 2, 4), (5, 2, 4), (5, 2)" in message

    cropped = nn.Sequential(nn.Linear(config.latent_size, CHANNELS * 28 * 28), nn.Unflatten(1, (CHANNELS, 28, 28)))
    model = VAE(config, encoder=MLPEncoder(config), decoder=cropped)  # returns the data's size, not the padded frame
    with pytest.raises(
        VaekitError, match=r"decoder Sequential returned \(6, 3, 28, 28\); expected .* \(6, 3, 32, 32\)"
    ):
        model.decode(torch.randn(2, 3, config.latent_size))
    model = VAE(config, encoder=MLPEncoder(config), decoder=MLPDecoder(config))
    model.eval()
    assert model.decode(model.encode(torch.rand(3, CHANNELS, 32, 32)).sample()).mean.shape == (3, CHANNELS, 28, 28)


class ConvThenMLP(MLPEncoder):
    """A conv layer whose BatchNorm keeps no running statistics, so eval mode normalises by the batch."""

    def __init__(self, config) -> None:
        super().__init__(config)
        s = config.padded_size
        self.conv = nn.Sequential(
            nn.Conv2d(config.channels, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU()
        )
        self.body = nn.Sequential(nn.Linear(4 * s * s, 32), nn.BatchNorm1d(32), nn.ReLU())

    def forward(self, x: torch.Tensor):
        return super().forward(self.conv(x))


def test_folding_leaves_what_it_cannot_fold_alone() -> None:
    config = own_config().model
    torch.manual_seed(0)
    model = VAE(config, encoder=ConvThenMLP(config), decoder=MLPDecoder(config)).eval()
    fast = inference_model(model)
    assert sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in fast.modules()) == 2  # both kept
    x = torch.rand(6, CHANNELS, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast.encode(x).mean, model.encode(x).mean)


class LazyEncoder(nn.Module):
    """The common PyTorch idiom: input sizes left to nn.LazyLinear and nn.LazyBatchNorm1d."""

    def __init__(self, config) -> None:
        super().__init__()
        self.k, self.d = config.components, config.latent_size
        self.net = nn.Sequential(
            nn.Flatten(), nn.LazyLinear(32), nn.LazyBatchNorm1d(), nn.ReLU(), nn.LazyLinear(self.k * (2 * self.d + 1))
        )

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        kd = self.k * self.d
        return out[:, :kd].view(-1, self.k, self.d), out[:, kd : 2 * kd].view(-1, self.k, self.d), out[:, 2 * kd :]


def test_lazy_modules_train_resume_reload_and_sample(data, tmp_path) -> None:
    config = own_config()
    config.train.epochs = 1
    torch.manual_seed(0)
    model = VAE(config.model, encoder=LazyEncoder(config.model), decoder=MLPDecoder(config.model))
    run_dir = vaekit.train(config, model=model, out=tmp_path / "run", data=data, progress=False)
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())
    # The dry run that sizes the lazy layers leaves BatchNorm's statistics to the real batches.
    steps = int(read_metrics(Path(run_dir))[-1]["step"])
    assert steps > 0 and int(model.encoder.net[2].num_batches_tracked) == steps
    trained_weights = model.state_dict()
    loaded = load_run(run_dir, "latest", encoder=LazyEncoder(config.model), decoder=MLPDecoder(config.model)).model
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained_weights.items())
    assert loaded.sample(3).shape == (3, CHANNELS, 28, 28)
    config = RunConfig.load(Path(run_dir) / "config.json")
    config.train.epochs = 2
    fresh = VAE(config.model, encoder=LazyEncoder(config.model), decoder=MLPDecoder(config.model))
    vaekit.train(config, model=fresh, resume=run_dir, data=data, progress=False)
    assert [row["epoch"] for row in read_metrics(Path(run_dir))] == ["1", "2"]
