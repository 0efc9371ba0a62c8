"""--optimizer adamax: the update Kingma & Ba's Algorithm 2 defines, saved and resumed exactly."""

import pytest
import torch

import vaekit.training.loop as train_module
from conftest import make_tiny_splits, tiny_config
from vaekit.errors import VaekitError
from vaekit.runs.checkpoint import load_checkpoint
from vaekit.training.loop import train
from vaekit.training.step import make_optimizer


@pytest.fixture(autouse=True)
def no_pictures(monkeypatch):
    monkeypatch.setattr(train_module, "refresh_pictures", lambda *args, **kwargs: None)


def test_adamax_follows_the_papers_update_rule_in_float64():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    theta = [p.detach().clone() for p in net.parameters()]
    m = [torch.zeros_like(p) for p in theta]
    u = [torch.zeros_like(p) for p in theta]
    lr, b1, b2 = 0.01, 0.9, 0.999
    optimizer = make_optimizer(net, lr, "adamax")
    for t in range(1, 6):
        x = torch.randn(8, 3, dtype=torch.float64)
        optimizer.zero_grad()
        net(x).pow(3).sum().backward()
        grads = [p.grad.detach().clone() for p in net.parameters()]
        optimizer.step()
        for i, g in enumerate(grads):  # Algorithm 2; torch adds eps=1e-8 to |g|, far inside the tolerance
            m[i] = b1 * m[i] + (1 - b1) * g
            u[i] = torch.maximum(b2 * u[i], g.abs())
            theta[i] = theta[i] - lr / (1 - b1**t) * m[i] / u[i]
        for mine, p in zip(theta, net.parameters()):
            torch.testing.assert_close(p.detach(), mine, rtol=1e-6, atol=1e-9)
    adam = make_optimizer(torch.nn.Linear(3, 2), lr)
    assert type(adam) is torch.optim.Adam and adam.defaults["fused"]


def test_an_adamax_run_saves_adamax_moments_and_resumes_onto_the_same_weights(tmp_path):
    splits = make_tiny_splits(n=60)
    config = tiny_config(data__train_subset=32, train__batch_size=8, train__epochs=2, train__optimizer="adamax")
    straight = load_checkpoint(
        train(config, out=tmp_path / "straight", data=splits, progress=False), with_training=True
    )
    state = straight.training["optimizer"]["state"]
    assert state and all("exp_inf" in s and "exp_avg_sq" not in s for s in state.values())
    config.train.max_minutes = 1e-6  # stops after step 1 ...
    stopped = train(config, out=tmp_path / "stopped", data=splits, progress=False)
    config.train.max_minutes = None  # ... and the rest without a budget
    resumed = load_checkpoint(train(config, resume=stopped, data=splits, progress=False), with_training=True)
    for k, v in straight.model.items():
        assert torch.equal(v, resumed.model[k]), k
    adam = load_checkpoint(
        train(
            tiny_config(data__train_subset=32, train__batch_size=8, train__epochs=2),
            out=tmp_path / "adam",
            data=splits,
            progress=False,
        )
    )
    assert any(not torch.equal(v, adam.model[k]) for k, v in straight.model.items() if v.is_floating_point())


def test_an_unknown_optimizer_is_refused_naming_the_choices():
    with pytest.raises(VaekitError, match="adam, adamax"):
        tiny_config(train__optimizer="sgd").validate()
