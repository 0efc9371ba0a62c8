"""A likelihood and a prior defined in a user's own code: registered there, they validate,
train, reload, evaluate and show in the CLI like the built-ins; a closed-form KL is a table entry."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import distributions as D
from torch import nn

import vaekit
import vaekit.training.loop as train_module
from conftest import make_tiny_splits, tiny_config
from vaekit.cli.main import build_parser
from vaekit.config import ModelConfig, registry
from vaekit.config.registry import register_likelihood, register_prior
from vaekit.distributions.kl import closed_form_kl, register_closed_form_kl
from vaekit.distributions.likelihoods import ImageDistribution
from vaekit.distributions.mixture import MixtureOfGaussians
from vaekit.errors import VaekitError
from vaekit.evaluation.evaluate import evaluate_model, number_kind
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import elbo_terms


class LaplaceImage(ImageDistribution):
    """Independent Laplace pixels of unit scale around loc (*batch, C, H, W)."""

    arg_constraints = {"loc": D.constraints.real}
    support = D.constraints.independent(D.constraints.real, 3)

    def __init__(self, loc: torch.Tensor, validate_args: bool | None = None) -> None:
        self.loc = loc
        super().__init__(loc, validate_args)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return (-(x - self.loc).abs() - math.log(2)).sum((-3, -2, -1))

    @property
    def mean(self) -> torch.Tensor:
        return self.loc


class LaplaceHead(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.param_channels = channels

    @classmethod
    def from_config(cls, config: ModelConfig) -> "LaplaceHead":
        return cls(config.channels)

    def forward(self, params: torch.Tensor) -> LaplaceImage:
        return LaplaceImage(torch.sigmoid(params))


class WideNormal(D.Independent):
    """N(0, 4 I), as torch.distributions builds it."""

    def __init__(self, latent_size: int, anchor: torch.Tensor) -> None:
        zeros = anchor.new_zeros(latent_size)
        super().__init__(D.Normal(zeros, zeros + 2.0), 1)


class WidePrior(nn.Module):
    def __init__(self, latent_size: int) -> None:
        super().__init__()
        self.latent_size = latent_size
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "WidePrior":
        return cls(config.latent_size)

    def forward(self, encode=None) -> WideNormal:
        return WideNormal(self.latent_size, self.anchor)


@register_closed_form_kl(MixtureOfGaussians, WideNormal)
def _kl_to_wide_normal(q: MixtureOfGaussians, p: WideNormal) -> torch.Tensor | None:
    if q.components != 1:
        return None
    var = q.scale[..., 0, :].pow(2) / 4
    return 0.5 * (var + q.loc[..., 0, :].pow(2) / 4 - 1 - var.log())


@pytest.fixture
def user_variants():
    register_likelihood("test-laplace", discrete=False, data="grey", help="a user's Laplace")(LaplaceHead)
    register_prior("test-wide", help="a user's N(0, 4 I)")(WidePrior)
    yield
    registry.unregister("likelihood", "test-laplace")
    registry.unregister("prior", "test-wide")


@pytest.fixture(autouse=True)
def no_pictures(monkeypatch):
    monkeypatch.setattr(train_module, "refresh_pictures", lambda *args, **kwargs: None)


def test_a_users_likelihood_and_prior_train_reload_and_evaluate(user_variants, tmp_path):
    splits = make_tiny_splits(n=40)
    config = tiny_config(
        model__likelihood="test-laplace",
        model__prior="test-wide",
        model__width=32,
        data__train_subset=16,
        train__batch_size=8,
    )
    out = vaekit.train(config, out=tmp_path / "run", data=splits, progress=False)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["model"]["likelihood"], saved["model"]["prior"]) == ("test-laplace", "test-wide")
    assert saved["data"]["binarize"] is False  # a "grey" likelihood trains on grey levels
    run = vaekit.load_run(out)
    assert isinstance(run.model.likelihood, LaplaceHead) and isinstance(run.model.prior_net, WidePrior)
    result = evaluate_model(run.model, splits.test.images[:6], binarize=False, samples=3, batch_size=6, progress=False)
    assert math.isfinite(result["test"]["nll"]["mean"])
    assert result["test"]["bits_per_dim"] is None and "test-laplace" in result["number_kind"]  # not discrete: a density
    assert run.model.sample(2).shape == (2, 1, 28, 28)


def test_registered_variants_are_offered_and_unregistered_ones_refused(user_variants):
    ModelConfig(likelihood="test-laplace", prior="test-wide").validate()
    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    help_text = " ".join(train_help.split())  # argparse wraps lines
    assert "test-laplace (a user's Laplace)" in help_text and "test-wide (a user's N(0, 4 I))" in help_text
    assert not number_kind("test-laplace", binarized=False)[1]
    with pytest.raises(VaekitError, match="unknown --prior 'wide'; choose one of normal, mog, vamp, test-wide"):
        ModelConfig(prior="wide").validate()


def test_a_registered_closed_form_kl_replaces_the_monte_carlo_estimate(user_variants):
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=3, prior="test-wide", width=32, image_size=28))
    x = torch.bernoulli(torch.rand(4, 1, 32, 32))
    terms = elbo_terms(model, x)
    q = model.encode(x)
    expected = D.kl_divergence(D.Independent(D.Normal(q.loc[:, 0], q.scale[:, 0]), 1), model.prior())
    assert terms.kl_per_dim.shape == (4, 3)
    torch.testing.assert_close(terms.kl, expected)
    assert (
        closed_form_kl(
            MixtureOfGaussians(q.loc.expand(4, 2, 3), q.scale.expand(4, 2, 3), torch.zeros(4, 2)), model.prior()
        )
        is None
    )


def test_a_taken_name_or_a_class_without_from_config_is_refused():
    class Other(nn.Module):
        @classmethod
        def from_config(cls, config):
            return cls()

    with pytest.raises(ValueError, match="'gaussian' is already registered by GaussianHead"):
        register_likelihood("gaussian", discrete=False, data="grey")(Other)
    with pytest.raises(TypeError, match="from_config"):
        register_prior("no-factory")(nn.Module)
    with pytest.raises(ValueError, match="data must be one of binary, grey"):
        register_likelihood("colour", discrete=True, data="rgb")
