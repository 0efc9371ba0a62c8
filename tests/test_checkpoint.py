"""Checkpoints: atomic writes, safe loading, refusing foreign run directories, NaN stops.

Each test fails if the guarantee it names is broken: a crash mid-write must leave the previous
checkpoint loadable, a pickle that runs code must never run, and so on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import blob_images, make_tiny_splits, tiny_config
from vaekit.cli.main import main
from vaekit.errors import VaekitError
from vaekit.models.vae import VAE
from vaekit.runs import checkpoint
from vaekit.runs.checkpoint import load_checkpoint, save_checkpoint
from vaekit.training.loop import train


def _state(step: int) -> dict:
    return {
        "epoch": 0,
        "step": step,
        "position": step,
        "best_val_elbo": None,
        "history": [],
        "sums": None,
        "seconds": 0.0,
    }


def _save(run: Path, step: int, value: float) -> None:
    save_checkpoint(run, {"w": torch.full((3, 4), value)}, _state(step), {"rng": [torch.get_rng_state()]})


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("where", ["weights", "rename", "pointer"])
def test_a_crash_midway_through_a_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch, where):
    _save(tmp_path, 1, 1.0)
    real_save_file, real_rename, real_replace = checkpoint.save_file, os.rename, os.replace

    def half_written_weights(tensors, path, metadata=None):
        real_save_file(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:  # the process dies halfway through the file
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(28, "No space left on device")

    def crash(*args, **kwargs):
        raise OSError(5, "Input/output error")

    if where == "weights":
        monkeypatch.setattr(checkpoint, "save_file", half_written_weights)
    elif where == "rename":
        monkeypatch.setattr(os, "rename", crash)
    else:
        monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        _save(tmp_path, 2, 2.0)
    monkeypatch.setattr(checkpoint, "save_file", real_save_file)
    monkeypatch.setattr(os, "rename", real_rename)
    monkeypatch.setattr(os, "replace", real_replace)

    ckpt = load_checkpoint(tmp_path, "latest", with_training=True)
    assert ckpt.state["step"] == 1 and torch.equal(ckpt.model["w"], torch.full((3, 4), 1.0))
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    _save(tmp_path, 2, 2.0)  # and the next write works and replaces it
    assert load_checkpoint(tmp_path).state["step"] == 2


def test_a_failed_write_during_training_stops_with_one_line_and_keeps_the_last(tmp_path, monkeypatch):
    calls = []
    real = checkpoint.save_file

    def fail_third(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", fail_third)
    with pytest.raises(
        VaekitError, match="could not write a checkpoint .*No space left on device.*previous one is kept"
    ):
        train(tiny_config(train__checkpoint_every=1), out=tmp_path / "run", data=make_tiny_splits(), progress=False)
    assert load_checkpoint(tmp_path / "run").state["step"] == 2


# --------------------------------------------------------------------------- safe loading


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    images, labels = blob_images(200)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, images=images[:, 0], labels=labels)
    return path


@pytest.fixture(scope="module")
def finished_run(npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                f"npz:{npz}",
                "--latent-size",
                "4",
                "--batch-size",
                "32",
                "--epochs",
                "1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


class _Payload:
    """Unpickling this creates a file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(run, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    planted = _latest(run) / "training_state.pt"
    torch.save({"optimizer": _Payload(marker), "rng": []}, planted)
    assert not marker.exists()

    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    line = _one_line(capsys)
    assert "training_state.pt is not a plain tensor file" in line and "refusing to load it" in line
    assert not marker.exists()
    with pytest.raises(VaekitError, match="refusing to load it"):
        load_checkpoint(run, with_training=True)
    assert not marker.exists()


def test_an_incompatible_format_version_is_refused_naming_both(run, capsys):
    state_file = _latest(run) / "state.json"
    state = json.loads(state_file.read_text())
    state["format_version"] = 99
    state_file.write_text(json.dumps(state))
    for argv in (["sample", str(run)], ["train", "--resume", str(run), "--quiet"]):
        assert main(argv) == 2
        line = _one_line(capsys)
        assert "checkpoint format 99" in line and f"reads {checkpoint.FORMAT_VERSION}" in line


@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_missing_extra_or_reshaped_tensors_are_refused_naming_them(run, capsys, change):
    from safetensors.torch import load_file, save_file

    weights = _latest(run) / "model.safetensors"
    tensors = load_file(str(weights))
    if change == "missing":
        del tensors["decoder.head.bias"]
        needle = "missing decoder.head.bias"
    elif change == "extra":
        tensors["encoder.spare.weight"] = torch.zeros(2)
        needle = "unexpected encoder.spare.weight"
    else:
        tensors["decoder.head.bias"] = torch.zeros(5)
        needle = "decoder.head.bias has shape (5,), expected (1,)"
    save_file(tensors, str(weights))
    for argv in (["sample", str(run)], ["train", "--resume", str(run), "--epochs", "2", "--quiet"]):
        assert main(argv) == 2
        line = _one_line(capsys)
        assert needle in line and "does not match its config" in line


# --------------------------------------------------------------------------- non-finite numbers


def _poison(monkeypatch, from_call: int, how: str) -> list[bool]:
    """From the from_call-th training forward on, make a term (or only its gradient) non-finite."""
    real = VAE.forward
    calls, anomaly_seen = [0], []

    def forward(self, x, x_target=None, iw_samples=1, estimator="marginal"):
        terms = real(self, x, x_target, iw_samples, estimator)
        if not self.training:
            return terms
        calls[0] += 1
        anomaly_seen.append(torch.is_anomaly_enabled())
        if calls[0] < from_call:
            return terms
        if how == "recon-value":
            recon = terms.recon * float("nan")
            return dataclasses.replace(terms, recon=recon, elbo=recon - terms.kl)
        kl = terms.kl + 0.0 * torch.sqrt(terms.kl - terms.kl)  # value 0, gradient 0 * inf = NaN
        return dataclasses.replace(terms, kl=kl, elbo=terms.recon - kl)

    monkeypatch.setattr(VAE, "forward", forward)
    return anomaly_seen


def _train_argv(npz: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--dataset",
        f"npz:{npz}",
        "--latent-size",
        "4",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--checkpoint-every",
        "1",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def test_a_nan_loss_stops_naming_step_and_term_and_keeps_the_last_checkpoint(npz, tmp_path, monkeypatch, capsys):
    seen = _poison(monkeypatch, 3, "recon-value")
    out = tmp_path / "run"
    assert main(_train_argv(npz, out)) == 2
    line = _one_line(capsys)
    assert seen == [False] * 3  # anomaly mode is off without --detect-anomaly
    assert "non-finite loss at step 3 in the reconstruction term" in line
    assert "last good checkpoint (step-000000002)" in line
    ckpt = load_checkpoint(out)
    assert ckpt.state["step"] == 2 and all(torch.isfinite(t).all() for t in ckpt.model.values())


def test_a_nan_gradient_with_a_finite_loss_names_the_kl_term(npz, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, 2, "kl-gradient")
    out = tmp_path / "run"
    assert main(_train_argv(npz, out)) == 2
    line = _one_line(capsys)
    assert "non-finite gradient at step 2 in the KL term" in line
    assert load_checkpoint(out).state["step"] == 1


def test_a_nan_on_the_first_step_leaves_no_run_directory(npz, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, 1, "recon-value")
    out = tmp_path / "run"
    assert main(_train_argv(npz, out)) == 2
    assert "no checkpoint had been written yet" in _one_line(capsys)
    assert not out.exists()


def test_detect_anomaly_turns_on_anomaly_mode_and_names_the_operation(npz, tmp_path, monkeypatch, capsys):
    seen = _poison(monkeypatch, 2, "kl-gradient")
    with pytest.warns(UserWarning):  # anomaly mode's own report: the forward trace of the culprit
        assert main(_train_argv(npz, tmp_path / "run", "--detect-anomaly")) == 2
    line = _one_line(capsys)
    assert seen[:2] == [True, True]  # both training steps ran in anomaly mode (the third call is the term check)
    assert "non-finite gradient at step 2 in the KL term" in line and "SqrtBackward0" in line
    assert not torch.is_anomaly_enabled()


def _spy_optimizer(monkeypatch) -> list:
    import vaekit.training.step as step_module

    made = []
    real = step_module.make_optimizer
    monkeypatch.setattr(
        step_module,
        "make_optimizer",
        lambda model, lr, name="adam": made.append((model, real(model, lr, name))) or made[-1][1],
    )
    return made


@pytest.mark.parametrize("optimizer_name", ["adam", "adamax"])  # skipped on the device; Adamax: by the host
@pytest.mark.parametrize(
    "how, message",
    [
        ("recon-value", "non-finite loss at step 2 in the reconstruction term"),
        ("kl-gradient", "non-finite gradient at step 2; "),
    ],
)
def test_checks_settled_later_still_name_the_first_bad_step_and_skip_every_bad_update(
    npz, tmp_path, monkeypatch, capsys, how, message, optimizer_name
):
    # What a GPU run does: the step never waits for the host; the flags are settled every
    # CUDA_CHECK_EVERY steps, here once at the epoch's end, and bad steps were skipped on the device.
    import vaekit.training.stops as stops_module

    monkeypatch.setattr(stops_module, "check_every", lambda device, detect_anomaly: 1000)
    made = _spy_optimizer(monkeypatch)
    _poison(monkeypatch, 2, how)
    out = tmp_path / "run"
    assert (
        main(_train_argv(npz, out)[:-5] + ["--quiet", "--out", str(out), "--optimizer", optimizer_name]) == 2
    )  # no --checkpoint-every: nothing forces an earlier check
    line = _one_line(capsys)
    assert message in line and "no checkpoint had been written yet" in line
    model, optimizer = made[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # steps 2.. were all bad, all skipped
    assert type(optimizer).__name__.lower() == optimizer_name
    assert {float(s["step"]) for s in optimizer.state.values()} == {1.0}  # only step 1 counted in the moments


def test_fused_adam_skips_a_step_with_found_inf_and_takes_one_without():
    from vaekit.training.step import make_optimizer

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(net, 0.1)
    before = [p.detach().clone() for p in net.parameters()]
    for flag, changes in ((1.0, False), (0.0, True)):
        net(torch.randn(4, 3)).square().sum().backward()
        optimizer.found_inf = torch.tensor(flag)
        optimizer.step()
        same = all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
        assert same is not changes
    reference = torch.optim.Adam(
        [p.detach().clone().requires_grad_() for p in before], lr=0.1
    )  # the same update, unfused
    for p, q in zip(reference.param_groups[0]["params"], net.parameters()):
        p.grad = q.grad.clone()
    reference.step()
    for p, q in zip(reference.param_groups[0]["params"], net.parameters()):
        torch.testing.assert_close(p, q)


def test_grad_clip_bounds_the_gradient_norm(tmp_path, monkeypatch):
    real = torch.nn.utils.clip_grad_norm_
    seen = []

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        before = real(parameters, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
        seen.append((max_norm, float(before), float(after)))
        return before

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    train(tiny_config(train__grad_clip=0.5), out=tmp_path / "run", data=make_tiny_splits(), progress=False)
    assert seen and all(m == 0.5 and after <= 0.5 * (1 + 1e-4) for m, _, after in seen)
    assert any(before > 0.5 for _, before, _ in seen)  # clipping really happened
