"""--ema: a moving average of the weights that validation, checkpoints and sampling use."""

import pytest
import torch

import vaekit.training.loop as train_module
from conftest import make_tiny_splits, tiny_config
from vaekit.errors import VaekitError
from vaekit.runs.checkpoint import load_checkpoint
from vaekit.runs.run_dir import load_run
from vaekit.training.loop import VALIDATION_SEED, train
from vaekit.training.validation import bound_means


@pytest.fixture(autouse=True)
def no_pictures(monkeypatch):
    monkeypatch.setattr(train_module, "refresh_pictures", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def splits():
    return make_tiny_splits(n=60)


def _config(**overrides):
    # 32 images in batches of 8 for 2 epochs: 8 steps
    settings = dict(data__train_subset=32, train__batch_size=8, train__epochs=2, train__lr=0.02, train__ema=0.7)
    return tiny_config(**{**settings, **overrides})


def test_the_checkpoint_holds_the_recursive_average_of_every_steps_weights(splits, tmp_path, monkeypatch):
    after_each_step = []
    step = train_module.training_step

    def recording_step(trainer, *args):
        out = step(trainer, *args)
        after_each_step.append({k: v.detach().double().clone() for k, v in trainer.model.state_dict().items()})
        return out

    monkeypatch.setattr(train_module, "training_step", recording_step)
    out = train(_config(), out=tmp_path / "run", data=splits, progress=False)
    assert len(after_each_step) == 8
    average = dict(after_each_step[0])  # the first update copies
    for n, weights in enumerate(after_each_step[1:], start=1):
        d = min(0.7, (1 + n) / (10 + n))  # the decay warms up: 2/11, 3/12, ...
        for k, v in weights.items():
            average[k] = d * average[k] + (1 - d) * v if v.is_floating_point() else v
    ckpt = load_checkpoint(out, "latest", with_training=True)
    for k, v in ckpt.model.items():  # BatchNorm's running statistics are averaged too
        if v.is_floating_point():
            torch.testing.assert_close(v.double(), average[k], rtol=1e-5, atol=1e-6, msg=k)
    trained = ckpt.training["weights"]
    assert any(not torch.equal(trained[k], ckpt.model[k]) for k in trained)
    for k, v in trained.items():
        assert torch.equal(v.double(), after_each_step[-1][k]), k


def test_averaging_leaves_the_trained_weights_as_they_were_without_it(splits, tmp_path):
    with_ema = load_checkpoint(train(_config(), out=tmp_path / "a", data=splits, progress=False), with_training=True)
    without = load_checkpoint(train(_config(train__ema=0.0), out=tmp_path / "b", data=splits, progress=False))
    assert "weights" not in load_checkpoint(tmp_path / "b", with_training=True).training
    for k, v in without.model.items():
        assert torch.equal(v, with_ema.training["weights"][k]), k


def test_validation_scores_the_average(splits, tmp_path):
    out = train(_config(), out=tmp_path / "run", data=splits, progress=False)
    run = load_run(out, "latest")  # the average, as model.safetensors holds it
    recorded = load_checkpoint(out).state["history"][-1]["val_elbo"]
    assert recorded == pytest.approx(bound_means(run.model, splits.val.images, 256, True, VALIDATION_SEED)["elbo"])
    run.model.load_state_dict(load_checkpoint(out, with_training=True).training["weights"])
    trained = bound_means(run.model, splits.val.images, 256, True, VALIDATION_SEED)["elbo"]
    assert abs(trained - recorded) > 1.0  # so the check above tells the two apart


def test_a_stopped_and_resumed_run_ends_on_the_same_average_and_weights(splits, tmp_path):
    config = _config(train__lr_schedule="cosine")
    straight = load_checkpoint(
        train(config, out=tmp_path / "straight", data=splits, progress=False), with_training=True
    )
    config.train.max_minutes = 1e-6  # stops after step 1 ...
    stopped = train(config, out=tmp_path / "stopped", data=splits, progress=False)
    config.train.max_minutes = None  # ... and the rest without a budget
    resumed = load_checkpoint(train(config, resume=stopped, data=splits, progress=False), with_training=True)
    for k, v in straight.model.items():
        assert torch.equal(v, resumed.model[k]), k
    for k, v in straight.training["weights"].items():
        assert torch.equal(v, resumed.training["weights"][k]), k


@pytest.mark.parametrize("decay", [1.0, -0.1, float("nan")])
def test_a_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(VaekitError, match="--ema must be a decay in \\[0, 1\\)"):
        _config(train__ema=decay).validate()


def test_the_decay_warms_up_to_the_one_asked_for():
    from vaekit.training.step import ema_decay

    assert ema_decay(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.999, 90) == pytest.approx(0.91)
    assert ema_decay(0.7, 100) == 0.7 and ema_decay(0.999, 10**6) == 0.999
