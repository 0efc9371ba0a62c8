"""IWAE / SIWAE bounds against the ELBO and a brute-force recomputation; the training loss."""

import json

import pytest
import torch
from torch import distributions as D

from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.errors import VaekitError
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import Terms, elbo_terms, iwae_terms, training_loss


def _model(components: int = 1, prior: str = "normal", dtype: torch.dtype = torch.float64) -> VAE:
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=3, components=components, prior=prior, prior_components=3, image_size=28))
    return model.to(dtype).eval()


def _x(n: int = 4, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.bernoulli(torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype))


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_iwae_with_one_sample_is_the_elbo_on_the_same_draw(prior):
    # A learnable prior takes elbo_terms down its Monte Carlo path: the same one draw per example.
    model, x = _model(prior=prior), _x()
    torch.manual_seed(7)
    elbo = elbo_terms(model, x)
    torch.manual_seed(7)
    iw = iwae_terms(model, x, None, 1)
    torch.testing.assert_close(iw.elbo, elbo.elbo)
    torch.testing.assert_close(iw.recon, elbo.recon)
    torch.testing.assert_close(iw.kl, elbo.kl)


def test_iwae_with_one_sample_is_the_monte_carlo_elbo_for_the_normal_prior():
    model, x = _model(), _x()
    torch.manual_seed(3)
    iw = iwae_terms(model, x, None, 1)
    torch.manual_seed(3)
    q = model.encode(x)
    z = q.component_rsample()[:, 0]  # (B, D): the same noise
    expected = (
        model.decode(z).log_prob(model.crop(x))
        + D.Normal(0.0, 1.0).log_prob(z).sum(-1)
        - D.Independent(D.Normal(q.loc[:, 0], q.scale[:, 0]), 1).log_prob(z)
    )
    torch.testing.assert_close(iw.elbo, expected)


@pytest.mark.parametrize("components", [1, 3])
def test_iwae_is_not_below_the_elbo(components):
    model, x = _model(components, prior="mog", dtype=torch.float32), _x(4, torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        iw = iwae_terms(model, x, None, 4)
    # Jensen on the very same draws: recon - kl is sum_k w_k mean_s log w_ks, the ELBO estimate
    # from these S draws per component (at S=1 it is elbo_terms' value, tested above).
    assert (iw.elbo >= iw.recon - iw.kl - 1e-3).all()
    assert iw.importance_weighted and iw.elbo.shape == (4,)


def test_stratified_bound_matches_a_brute_force_recomputation():
    model, x = _model(components=2, prior="mog"), _x(2)
    samples = 2
    torch.manual_seed(11)
    got = iwae_terms(model, x, None, samples).elbo
    torch.manual_seed(11)
    q = model.encode(x)
    z = q.component_rsample((samples,))  # (S, B, K, D)
    prior = model.prior()
    reference_prior = D.MixtureSameFamily(
        D.Categorical(logits=prior.logits), D.Independent(D.Normal(prior.loc, prior.scale), 1)
    )
    for b in range(2):
        posterior = D.MixtureSameFamily(
            D.Categorical(logits=q.logits[b]), D.Independent(D.Normal(q.loc[b], q.scale[b]), 1)
        )
        w = torch.softmax(q.logits[b], 0)
        total = torch.zeros((), dtype=torch.float64)
        for k in range(2):
            for s in range(samples):
                zks = z[s, b, k]
                log_joint = model.decode(zks[None]).log_prob(model.crop(x[b : b + 1]))[0] + reference_prior.log_prob(
                    zks
                )
                total = total + w[k] * torch.exp(log_joint - posterior.log_prob(zks)) / samples
        torch.testing.assert_close(got[b], torch.log(total))


def test_stratified_bound_gives_the_mixture_weights_a_gradient():
    model = _model(components=3, dtype=torch.float32).train()
    iw = iwae_terms(model, _x(3, torch.float32), None, 2)
    training_loss(iw).backward()
    assert model.encoder.logits_head.weight.grad.abs().sum() > 0


def test_training_loss_for_the_importance_weighted_bound_is_minus_the_bound():
    terms = Terms(
        torch.tensor([-5.0, -7.0]), torch.tensor([-4.0, -4.0]), torch.tensor([3.0, 4.0]), importance_weighted=True
    )
    assert training_loss(terms).item() == 6.0
    with pytest.raises(ValueError, match="ELBO only"):
        training_loss(terms, beta=0.5)


def test_free_bits_needs_the_per_dimension_kl():
    # A floor on the summed KL would take the gradient off every dimension at once.
    terms = Terms(torch.tensor([-12.0]), torch.tensor([-10.0]), torch.tensor([2.0]), latent_size=4)
    with pytest.raises(ValueError, match="per-dimension KL"):
        training_loss(terms, free_bits=1.0)


def test_free_bits_floors_each_dimension_of_the_batch_mean_kl():
    kl_per_dim = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # batch means 0.2 and 3.0
    terms = Terms(
        torch.tensor([-16.1, -15.3]), torch.tensor([-10.0, -11.0]), kl_per_dim.sum(-1), kl_per_dim, latent_size=2
    )
    assert training_loss(terms, free_bits=0.5).item() == pytest.approx(10.5 + 0.5 + 3.0)


@pytest.mark.parametrize(
    "model", [ModelConfig(components=2, prior="normal"), ModelConfig(prior="mog"), ModelConfig(prior="vamp")]
)
def test_config_refuses_free_bits_where_the_kl_has_no_per_dimension_form(model):
    with pytest.raises(
        VaekitError, match=r"--free-bits is a per-dimension KL floor.*use --kl-warmup or --beta instead"
    ):
        RunConfig(model, train=TrainConfig(free_bits=0.5)).validate()
    RunConfig(model, train=TrainConfig(free_bits=0.5)).validate(for_training=False)  # a finished run still loads
    RunConfig(ModelConfig(prior="normal"), train=TrainConfig(free_bits=0.5)).validate()


def test_config_refuses_beta_with_importance_weights_and_trains_grey_likelihoods_on_grey_levels():
    with pytest.raises(VaekitError, match="iw-samples"):
        RunConfig(train=TrainConfig(iw_samples=5, beta=0.5)).validate()
    with pytest.raises(VaekitError, match="iw-samples"):
        RunConfig(train=TrainConfig(iw_samples=5, kl_warmup=2)).validate()
    for likelihood in ("continuous-bernoulli", "gaussian", "logistic"):
        config = RunConfig(ModelConfig(likelihood=likelihood), DataConfig(binarize=True))
        assert config.resolved().data.binarize is False
        assert config.validate().data.binarize is True  # validating only checks; resolved() returned a copy
    assert RunConfig(ModelConfig(likelihood="bernoulli"), DataConfig(binarize=True)).resolved().data.binarize is True
    assert RunConfig(ModelConfig(likelihood="bernoulli"), DataConfig(binarize=False)).resolved().data.binarize is False


def test_the_kl_warmup_defaults_to_four_epochs_for_the_elbo_and_none_for_importance_weighted_bounds():
    assert TrainConfig().warmup_epochs == 4.0
    assert TrainConfig(iw_samples=5).warmup_epochs == 0.0
    assert TrainConfig(mixture_estimator="stratified").warmup_epochs == 0.0
    assert TrainConfig(kl_warmup=0).warmup_epochs == 0.0
    assert TrainConfig(kl_warmup=0.5).warmup_epochs == 0.5
    RunConfig(ModelConfig(components=2), train=TrainConfig(iw_samples=5)).validate()  # the default needs no flag
    with pytest.raises(VaekitError, match="--kl-warmup must be >= 0"):
        TrainConfig(kl_warmup=-1).validate()


def test_a_run_saves_its_kl_warmup_as_a_number_and_a_saved_null_keeps_the_two_epochs_it_meant(tmp_path):
    assert RunConfig().resolved().train.kl_warmup == 4.0
    assert RunConfig(train=TrainConfig(iw_samples=5)).resolved().train.kl_warmup == 0.0
    assert RunConfig(train=TrainConfig(kl_warmup=1.5)).resolved().train.kl_warmup == 1.5
    # config.json files written while null meant the default, 2 epochs then (the shipped models' among them)
    for iw_samples, meant in ((1, 2.0), (5, 0.0)):
        saved = RunConfig(train=TrainConfig(iw_samples=iw_samples)).to_dict()
        assert saved["train"]["kl_warmup"] is None
        path = tmp_path / f"config-{iw_samples}.json"
        path.write_text(json.dumps(saved))
        assert RunConfig.load(path).train.warmup_epochs == meant


def test_the_kl_weight_rises_step_by_step_and_the_metrics_name_each_epochs_objective(tmp_path, monkeypatch):
    import vaekit.training.loop as train_module
    from conftest import make_tiny_splits, tiny_config
    from vaekit.runs.run_dir import read_metrics

    monkeypatch.setattr(train_module, "refresh_pictures", lambda *args, **kwargs: None)
    seen = []
    step = train_module.training_step

    def recording_step(trainer, x, lr, kl_w):
        out = step(trainer, x, lr, kl_w)
        terms = [out.loss.detach(), out.terms.recon.detach().mean(), out.terms.kl.detach().mean()]
        seen.append((kl_w, *map(float, terms)))
        return out

    monkeypatch.setattr(train_module, "training_step", recording_step)
    # 32 images in batches of 8: 4 steps an epoch; the KL weight reaches 1 after 1.5 epochs.
    config = tiny_config(data__train_subset=32, train__batch_size=8, train__epochs=3, train__kl_warmup=1.5)
    out = train_module.train(config, out=tmp_path / "run", data=make_tiny_splits(n=60), progress=False)
    expected = [min(1.0, (e + i / 4) / 1.5) for e in range(3) for i in range(4)]
    assert [w for w, *_ in seen] == pytest.approx(expected)
    for w, loss, recon, kl in seen:  # the loss weights the KL term by it
        assert loss == pytest.approx(-recon + w * kl, rel=1e-5)
    names = [row["objective"] for row in read_metrics(out)]
    assert names == ["beta-objective(beta=1, warmup=1.5, free_bits=0)"] * 2 + ["elbo"]
