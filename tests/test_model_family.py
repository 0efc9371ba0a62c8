"""Every prior x likelihood trains through `train()`, reloads, and samples; sizes up to 64x64x3."""

import json

import pytest
import torch

import vaekit.training.loop as train_module
from conftest import make_tiny_splits, tiny_config
from vaekit.cli.flags import config_from_args
from vaekit.cli.main import build_parser
from vaekit.config import registry
from vaekit.errors import VaekitError
from vaekit.runs.run_dir import load_run
from vaekit.training.loop import train


@pytest.fixture(autouse=True)
def no_pictures(monkeypatch):
    # The per-epoch PNGs (matplotlib) cost more than the training step; the model's own
    # sample() is called below instead.
    monkeypatch.setattr(train_module, "refresh_pictures", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def splits():
    return make_tiny_splits(n=60)


@pytest.mark.parametrize("likelihood", list(registry.likelihoods()))
@pytest.mark.parametrize("prior", list(registry.priors()))
def test_each_prior_and_likelihood_trains_one_step_reloads_and_samples(prior, likelihood, splits, tmp_path):
    components = 2 if prior == "vamp" else 1  # K>1 once per likelihood, through the vamp prior's M*K mixture
    config = tiny_config(
        model__prior=prior,
        model__likelihood=likelihood,
        model__prior_components=3,
        model__components=components,
        model__logistic_mixtures=2,
        data__train_subset=8,
        train__batch_size=8,
    )
    out = train(config, out=tmp_path / "run", data=splits, progress=False)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["prior"] == prior and saved["model"]["likelihood"] == likelihood
    assert saved["data"]["binarize"] is (registry.likelihood(likelihood).data == "binary")
    run = load_run(out)
    assert isinstance(run.model.prior_net, registry.prior(prior).cls)  # `vaekit sample` draws from the run's own prior
    torch.manual_seed(0)
    images = run.model.sample(3)
    assert images.shape == (3, 1, 28, 28) and torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


def test_importance_weighted_training_with_a_mixture_posterior(splits, tmp_path):
    config = tiny_config(
        model__prior="mog",
        model__prior_components=3,
        model__components=2,
        train__iw_samples=3,
        data__train_subset=8,
        train__batch_size=8,
    )
    out = train(config, out=tmp_path / "run", data=splits, progress=False)
    assert load_run(out).config.train.iw_samples == 3


def test_64_pixel_rgb_images_train_one_step(tmp_path):
    data = make_tiny_splits(n=30, size=64, channels=3)
    config = tiny_config(
        model__prior="vamp",
        model__prior_components=2,
        model__likelihood="logistic",
        model__image_size=64,
        data__train_subset=4,
        train__batch_size=4,
    )
    out = train(config, out=tmp_path / "run", data=data, progress=False)
    run = load_run(out)
    assert run.model.prior_net.pseudo_inputs().shape == (2, 3, 64, 64)
    assert run.model.sample(2).shape == (2, 3, 64, 64)


def test_time_budget_stops_at_a_step_and_resumes_where_it_stopped(splits, tmp_path):
    # 32 images in batches of 8: four steps an epoch; a budget that is gone at once stops after step 1.
    config = tiny_config(data__train_subset=32, train__batch_size=8, train__epochs=2, train__max_minutes=1e-6)
    out = train(config, out=tmp_path / "run", data=splits, progress=False)
    assert load_run(out).state["step"] == 1 and not (out / "metrics.csv").exists()
    resumed = load_run(train(config, resume=out, data=splits, progress=False))  # a fresh budget: one more step
    assert (resumed.state["step"], resumed.state["position"], resumed.state["epoch"]) == (2, 2, 0)


def test_cli_flags_reach_the_model_config():
    args = build_parser().parse_args(
        [
            "train",
            "--likelihood",
            "logistic",
            "--logistic-mixtures",
            "3",
            "--prior",
            "vamp",
            "--prior-components",
            "7",
            "--gaussian-variance",
            "global",
            "--iw-samples",
            "4",
            "--max-minutes",
            "2.5",
            "--lr-schedule",
            "cosine",
        ]
    )
    config = config_from_args(args)
    m = config.model
    assert (m.likelihood, m.logistic_mixtures, m.prior, m.prior_components, m.gaussian_variance) == (
        "logistic",
        3,
        "vamp",
        7,
        "global",
    )
    assert config.data.binarize is False and config.train.iw_samples == 4 and config.train.max_minutes == 2.5
    assert config.train.lr_schedule == "cosine"
    assert config.train.objective_in(0) == "iwae(4)"


def test_cosine_learning_rate_follows_the_closed_form():
    from vaekit.config import TrainConfig

    t = TrainConfig(lr=0.02, lr_schedule="cosine", lr_warmup=0)
    assert t.lr_at(0, 100) == pytest.approx(0.02)
    assert t.lr_at(50, 100) == pytest.approx(0.01)
    assert t.lr_at(25, 100) == pytest.approx(0.01 * (1 + 2**-0.5))
    assert t.lr_at(100, 100) == pytest.approx(0.0, abs=1e-15) and t.lr_at(150, 100) == pytest.approx(0.0, abs=1e-15)
    assert TrainConfig(lr=0.02, lr_schedule="constant", lr_warmup=0).lr_at(50, 100) == 0.02


def test_learning_rate_warmup_rises_linearly_then_the_cosine_spans_the_rest():
    from vaekit.config import TrainConfig

    t = TrainConfig(lr=0.02, lr_schedule="cosine", lr_warmup=10)
    assert [t.lr_at(s, 110) for s in (0, 4, 9)] == pytest.approx([0.002, 0.01, 0.02])
    assert t.lr_at(10, 110) == pytest.approx(0.02)  # the cosine's first step
    assert t.lr_at(60, 110) == pytest.approx(0.01)  # half-way through the 100 cosine steps
    assert t.lr_at(110, 110) == pytest.approx(0.0, abs=1e-15)
    assert TrainConfig(lr=0.02, lr_warmup=10, lr_schedule="constant").lr_at(50, 110) == 0.02
    with pytest.raises(VaekitError, match="--lr-warmup must be >= 0"):
        TrainConfig(lr_warmup=-1).validate()


def test_cosine_schedule_resumes_onto_the_same_weights(splits, tmp_path):
    # 32 images in batches of 8 for 2 epochs: 8 steps, the last one taken at lr_at(7, 8).
    config = tiny_config(
        data__train_subset=32, train__batch_size=8, train__epochs=2, train__lr_schedule="cosine", train__lr_warmup=2
    )
    from vaekit.runs.checkpoint import load_checkpoint

    straight_dir = train(config, out=tmp_path / "straight", data=splits, progress=False)
    optimizer = load_checkpoint(straight_dir, "latest", with_training=True).training["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(config.train.lr_at(7, 8))
    assert config.train.lr_at(7, 8) < 0.1 * config.train.lr  # the schedule did anneal
    config.train.max_minutes = 1e-6  # stops after step 1 ...
    out = train(config, out=tmp_path / "stopped", data=splits, progress=False)
    config.train.max_minutes = None  # ... and the rest without a budget
    resumed = load_run(train(config, resume=out, data=splits, progress=False), "latest")
    straight = load_run(straight_dir, "latest")
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_a_resumed_run_with_more_epochs_records_them_in_its_config(splits, tmp_path):
    from vaekit.config import RunConfig
    from vaekit.runs.run_dir import CONFIG, read_metrics

    config = tiny_config(data__train_subset=32, train__batch_size=8)
    out = train(config, out=tmp_path / "run", data=splits, progress=False)
    assert RunConfig.load(out / CONFIG).train.epochs == 1
    config.train.epochs, config.train.max_minutes = 2, 30.0
    train(config, resume=out, data=splits, progress=False)
    saved = RunConfig.load(out / CONFIG)
    assert (saved.train.epochs, saved.train.max_minutes) == (2, 30.0)
    assert [int(row["epoch"]) for row in read_metrics(out)] == [1, 2]


def test_width_scales_every_block_and_survives_a_reload(splits, tmp_path):
    config = config_from_args(
        build_parser().parse_args(
            ["train", "--width", "64", "--blocks", "plain", "--latent-size", "4", "--dataset", "blobs"]
        )
    )
    config.data.train_subset, config.train.batch_size, config.train.epochs = 8, 8, 1
    out = train(config, out=tmp_path / "run", data=splits, progress=False)
    model = load_run(out).model
    encoder_widths = [block[0].out_channels for block in model.encoder.body]
    decoder_widths = [block[0].out_channels for block in model.decoder.body]
    assert encoder_widths == [8, 16, 32, 64] and decoder_widths == [
        64,
        32,
        16,
        8,
    ]  # the notebook's 32-64-128-256, quartered
    assert model.encoder.loc_head.in_channels == 64 and model.decoder.head.in_channels == 8
    assert model.sample(2).shape == (2, 1, 28, 28)


def test_a_run_saved_before_width_existed_loads_with_the_notebooks_widths(splits, tmp_path):
    config = tiny_config(data__train_subset=8, train__batch_size=8, model__width=256)  # all runs were, then
    out = train(config, out=tmp_path / "run", data=splits, progress=False)
    saved = json.loads((out / "config.json").read_text())
    del saved["model"]["width"]
    (out / "config.json").write_text(json.dumps(saved))
    model = load_run(out).model
    assert [block[0].out_channels for block in model.encoder.body] == [32, 64, 128, 256]


def test_settings_added_later_mean_what_runs_before_them_were_trained_with():
    from vaekit.config import RunConfig

    saved = RunConfig().to_dict()
    added_later = (
        ("model", "width"),
        ("model", "blocks"),
        ("train", "ema"),
        ("train", "lr_warmup"),
        ("train", "lr_schedule"),
    )
    for section, name in added_later:
        del saved[section][name]
    old = RunConfig.from_dict(saved)
    assert (old.model.width, old.model.blocks) == (256, "plain")
    assert (old.train.ema, old.train.lr_warmup, old.train.lr_schedule) == (0.0, 0, "constant")
    new = RunConfig()
    assert (new.model.width, new.model.blocks, new.train.lr_schedule) == (
        96,
        "gated",
        "cosine",
    )  # so the lines above test something
