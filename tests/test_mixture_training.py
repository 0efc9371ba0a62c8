"""Training with a mixture posterior: component usage is measured, and the pathwise estimator
decodes one draw per image."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_tiny_splits, tiny_config
from vaekit.config import RunConfig
from vaekit.data.batching import binarize_fixed
from vaekit.distributions.mixture import MixtureOfGaussians
from vaekit.errors import VaekitError
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import elbo_terms, training_loss
from vaekit.objectives.usage import USAGE_COLUMNS, component_usage, posterior_weights
from vaekit.runs.run_dir import load_run, read_metrics
from vaekit.training.loop import VALIDATION_SEED, train


def test_usage_reads_one_hot_and_spread_weights() -> None:
    one_hot = torch.eye(3).repeat(4, 1)  # every image sure of one component, the three equally often
    usage = component_usage(one_hot)
    assert usage["usage_entropy"] == pytest.approx(math.log(3))
    assert usage["usage_image_entropy"] == pytest.approx(0.0, abs=1e-12)
    assert usage["usage_effective"] == pytest.approx(3.0)
    collapsed = component_usage(torch.tensor([[0.0, 1.0, 0.0]]).repeat(5, 1))
    assert collapsed["usage_effective"] == pytest.approx(1.0) and collapsed["mean_weights"] == [0.0, 1.0, 0.0]
    spread = component_usage(torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]]))
    assert spread["usage_image_entropy"] == pytest.approx(math.log(2))
    assert spread["usage_entropy"] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_pathwise_fit_of_three_modes_uses_all_three() -> None:
    # The best K=3 posterior for a target with three equal modes is the target itself, weight 1/3
    # on each: reachable from lopsided weights only if the draws carry gradients to the weights.
    # The modes overlap (2.5 scales apart): the weights' transport velocity works through the
    # density between components, so with modes 10 scales apart its signal is too rare to use
    # (benchmarks/README.md, "mixture gradients").
    torch.manual_seed(0)
    modes = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    target = MixtureOfGaussians(modes, torch.full((3, 2), 0.4), torch.zeros(3))
    loc = (modes + 0.2).requires_grad_()
    log_scale = torch.full((3, 2), math.log(0.5), requires_grad=True)
    logits = torch.tensor([2.0, 0.0, -2.0], requires_grad=True)  # start lopsided: weights 0.87, 0.12, 0.02
    optimizer = torch.optim.Adam([loc, log_scale, logits], lr=0.05)
    for _ in range(150):
        q = MixtureOfGaussians(loc, log_scale.exp(), logits)
        z = q.rsample((128,))
        loss = (q.log_prob(z) - target.log_prob(z)).mean()  # KL(q || target) by one pass of draws
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    usage = component_usage(torch.softmax(logits.detach(), -1)[None])
    assert usage["usage_effective"] > 2.8, usage
    assert usage["usage_image_entropy"] > math.log(3) - 0.05


def _decoded_batch_sizes(model: VAE) -> list[int]:
    sizes: list[int] = []
    model.decoder.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    return sizes


@pytest.mark.parametrize(
    "estimator, iw_samples, decoded",
    [("marginal", 1, 5 * 8), ("pathwise", 1, 8), ("pathwise", 3, 3 * 8), ("stratified", 1, 5 * 8)],
)
def test_pathwise_decodes_one_latent_per_image_and_sample(estimator: str, iw_samples: int, decoded: int) -> None:
    model = VAE(tiny_config(model__components=5).model)
    sizes = _decoded_batch_sizes(model)
    x = torch.bernoulli(torch.full((8, 1, 32, 32), 0.3))
    terms = model(x, iw_samples=iw_samples, estimator=estimator)
    training_loss(terms).backward()
    assert sizes == [decoded]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_pathwise_elbo_is_the_marginal_elbo_in_expectation() -> None:
    torch.manual_seed(0)
    model = VAE(tiny_config(model__components=3).model).eval()
    with torch.no_grad():
        for p in model.encoder.parameters():  # spread the weights so every component counts
            p.add_(0.05 * torch.randn_like(p))
    x = torch.bernoulli(torch.full((4, 1, 32, 32), 0.3)).repeat(500, 1, 1, 1)  # 500 copies of 4 images
    with torch.no_grad():  # eval mode: BatchNorm does not mix the copies
        exact = elbo_terms(model, x).elbo.view(500, 4).double()  # marginalises the component exactly
        pathwise = model(x, estimator="pathwise").elbo.view(500, 4).double()
    diff = pathwise.mean(0) - exact.mean(0)
    stderr = (pathwise.var(0) / len(pathwise) + exact.var(0) / len(exact)).sqrt()
    assert (diff.abs() / stderr).max() < 4, (diff, stderr)


def test_k3_run_records_usage_each_epoch_as_its_weights_say(tmp_path) -> None:
    data = make_tiny_splits()
    config = tiny_config(model__components=3, train__epochs=2, train__mixture_estimator="pathwise")
    run_dir = train(config, out=tmp_path / "run", data=data, progress=False)
    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(r[c] != "" for r in rows for c in USAGE_COLUMNS)
    model = load_run(run_dir, which="latest").model
    x_val = binarize_fixed(data.val.images, VALIDATION_SEED)
    usage = component_usage(posterior_weights(model, x_val))
    for column in USAGE_COLUMNS:
        assert float(rows[-1][column]) == pytest.approx(usage[column], rel=1e-5)
    assert 1.0 <= float(rows[-1]["usage_effective"]) <= 3.0
    assert json.loads((run_dir / "config.json").read_text())["train"]["mixture_estimator"] == "pathwise"
    assert (run_dir / "component_usage.png").is_file()


def test_k1_metrics_have_no_usage_columns(tmp_path) -> None:
    run_dir = train(tiny_config(), out=tmp_path / "run", data=make_tiny_splits(), progress=False)
    assert not set(USAGE_COLUMNS) & set(read_metrics(run_dir)[0])


def test_old_configs_load_with_the_marginal_estimator() -> None:
    data = tiny_config().to_dict()
    del data["train"]["mixture_estimator"]
    assert RunConfig.from_dict(data).train.mixture_estimator == "marginal"


def test_estimator_choices_are_checked() -> None:
    with pytest.raises(VaekitError, match="--mixture-estimator"):
        tiny_config(train__mixture_estimator="magic").validate()
    with pytest.raises(VaekitError, match="needs --components > 1"):
        tiny_config(train__mixture_estimator="stratified").validate()
    config = tiny_config(model__components=3, train__mixture_estimator="stratified")
    assert config.validate().train.objective_in(0) == "siwae(1)"
    with pytest.raises(VaekitError, match="importance-weighted"):
        tiny_config(model__components=3, train__mixture_estimator="stratified", train__beta=2.0).validate()


def test_equal_weights_give_every_component_one_kth_and_train_through_pathwise() -> None:
    model = VAE(tiny_config(model__components=4, model__mixture_weights="equal").model)
    x = torch.bernoulli(torch.full((8, 1, 32, 32), 0.3))
    q = model.encode(x)
    torch.testing.assert_close(q.weights, torch.full((8, 4), 0.25))
    training_loss(model(x, estimator="pathwise")).backward()
    grad = model.encoder.logits_head.weight.grad
    assert grad is None or not grad.any()  # the head's output is not used
    assert model.encoder.loc_head.weight.grad.abs().sum() > 0
    with pytest.raises(VaekitError, match="--mixture-weights"):
        tiny_config(model__mixture_weights="fixed").validate()
