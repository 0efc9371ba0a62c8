"""Priors: log_prob against torch.distributions in float64, sample shapes, gradients, BatchNorm."""

import pytest
import torch
from torch import distributions as D

from vaekit.config import ModelConfig, registry
from vaekit.distributions.mixture import MixtureOfGaussians
from vaekit.distributions.priors import MixtureOfGaussiansPrior, StandardNormalPrior, VampPrior, make_prior
from vaekit.models.vae import VAE


def _reference_mixture(loc, scale, logits) -> D.MixtureSameFamily:
    return D.MixtureSameFamily(D.Categorical(logits=logits), D.Independent(D.Normal(loc, scale), 1))


def _vamp_model(components: int = 2, pseudo: int = 3) -> VAE:
    torch.manual_seed(0)
    return VAE(ModelConfig(latent_size=3, components=components, prior="vamp", prior_components=pseudo, image_size=28))


def test_make_prior_builds_each_kind():
    def config(prior: str) -> ModelConfig:
        return ModelConfig(latent_size=4, prior=prior, prior_components=5, channels=3, image_size=32)

    assert isinstance(make_prior(config("normal")), StandardNormalPrior)
    assert isinstance(make_prior(config("mog")), MixtureOfGaussiansPrior)
    assert isinstance(make_prior(config("vamp")), VampPrior)
    with pytest.raises(ValueError, match="unknown prior"):
        make_prior(config("laplace"))


@pytest.mark.parametrize("kind", list(registry.priors()))
def test_every_prior_is_a_distribution_over_the_latents(kind):
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=3, components=2, prior=kind, prior_components=4, image_size=28)).eval()
    p = model.prior()
    assert isinstance(p, D.Distribution)
    assert (p.batch_shape, p.event_shape) == ((), (3,))
    z = p.sample((5, 2))
    assert z.shape == (5, 2, 3) and not z.requires_grad
    assert p.log_prob(z).shape == (5, 2) and torch.isfinite(p.log_prob(z)).all()
    assert type(p).__name__ in repr(p)


def test_normal_prior_log_prob_and_shapes():
    p = StandardNormalPrior(5)()
    z = torch.randn(7, 2, 5)
    torch.testing.assert_close(p.log_prob(z), D.Normal(0.0, 1.0).log_prob(z).sum(-1))
    assert p.sample((3,)).shape == (3, 5) and p.sample((2, 4)).shape == (2, 4, 5)


def test_mog_prior_log_prob_matches_mixture_same_family():
    torch.manual_seed(0)
    prior = MixtureOfGaussiansPrior(latent_size=3, components=4).double()
    with torch.no_grad():  # make the components unequal so the weights matter
        prior.log_scale.uniform_(-1, 1)
        prior.logits.normal_()
    z = torch.randn(6, 5, 3, dtype=torch.float64) * 2
    expected = _reference_mixture(prior.loc, prior.log_scale.exp(), prior.logits).log_prob(z)
    torch.testing.assert_close(prior().log_prob(z), expected)


def test_mog_prior_samples_have_the_mixture_moments():
    prior = MixtureOfGaussiansPrior(latent_size=1, components=2)
    with torch.no_grad():
        prior.loc.copy_(torch.tensor([[-3.0], [2.0]]))
        prior.log_scale.copy_(torch.tensor([[0.0], [-1.0]]))
        prior.logits.copy_(torch.tensor([0.0, 1.0]))
    torch.manual_seed(1)
    z = prior().sample((40_000,))
    w = torch.softmax(prior.logits.detach(), 0)
    mean = (w * torch.tensor([-3.0, 2.0])).sum()
    var = (w * (torch.tensor([1.0, torch.e**-2]) + torch.tensor([9.0, 4.0]))).sum() - mean**2
    assert z.shape == (40_000, 1)
    assert abs(z.mean() - mean) < 0.05 and abs(z.var() - var) < 0.15


def test_mog_prior_gradients_reach_every_parameter():
    torch.manual_seed(0)
    prior = MixtureOfGaussiansPrior(latent_size=3, components=4)
    prior().log_prob(torch.randn(10, 3)).sum().backward()
    for name, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert prior().sample((2, 3)).shape == (2, 3, 3)


def test_vamp_prior_is_the_average_of_the_pseudo_inputs_posteriors():
    model = _vamp_model().double().eval()
    prior = model.prior()
    assert isinstance(prior, MixtureOfGaussians) and prior.components == 3 * 2
    u = model.prior_net.pseudo_inputs()
    z = torch.randn(5, 3, dtype=torch.float64)
    # Brute force: 1/M sum_m q(z | u_m), each posterior encoded alone as a MixtureSameFamily.
    densities = []
    for m in range(u.shape[0]):
        q = model.encode(u[m : m + 1])
        densities.append(_reference_mixture(q.loc[0], q.scale[0], q.logits[0]).log_prob(z))
    expected = torch.logsumexp(torch.stack(densities), 0) - torch.log(torch.tensor(3.0, dtype=torch.float64))
    torch.testing.assert_close(prior.log_prob(z), expected)


def test_vamp_pseudo_inputs_are_images_in_the_data_frame():
    model = _vamp_model()
    u = model.prior_net.pseudo_inputs()
    assert u.shape == (3, 1, 32, 32) and u.min() >= 0 and u.max() <= 1
    assert u[..., :2, :].abs().max() == 0 and u[..., :, -2:].abs().max() == 0  # the 28-in-32 zero frame
    assert u[..., 2:30, 2:30].min() > 0


def test_vamp_prior_leaves_batchnorm_running_statistics_alone():
    model = _vamp_model().train()
    x = torch.rand(8, 1, 32, 32)
    model.encode(x)  # gives the running statistics something other than their initial values
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    train_mode = model.prior().log_prob(torch.zeros(2, 3))
    after = {k: v for k, v in model.state_dict().items() if k in before}
    for key in before:
        torch.testing.assert_close(after[key], before[key], msg=key)
    assert all(m.training for m in model.modules())  # modes restored
    # The pseudo-inputs are encoded with running statistics: the same prior as in eval mode.
    torch.testing.assert_close(train_mode, model.eval().prior().log_prob(torch.zeros(2, 3)))


def test_vamp_prior_gradients_reach_pseudo_inputs_and_samples_have_shape():
    model = _vamp_model().train()
    model.prior().log_prob(torch.randn(4, 3)).sum().backward()
    grad = model.prior_net.pseudo_logits.grad
    assert grad is not None and grad[..., 2:30, 2:30].abs().sum() > 0
    assert model.prior().sample((6,)).shape == (6, 3)
    assert model.sample(2).shape == (2, 1, 28, 28)
