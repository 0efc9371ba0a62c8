"""bf16 in training: autocast around the networks on the CPU too, the bounds in fp32, losses that
match fp32's within bf16's rounding, `--precision auto` decided from the processor's bf16 units
(or a micro-benchmark where they cannot be read), and config.json recording what a run used."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import vaekit
import vaekit.devices as devices
from conftest import make_tiny_splits, tiny_config
from vaekit.config import ModelConfig
from vaekit.models.precision import AutocastNetwork, full_precision, network_autocast
from vaekit.models.speed import training_networks
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import training_loss
from vaekit.runs.run_dir import read_metrics

CPU = torch.device("cpu")


def _loss_and_grads(model: VAE, x: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor, VAE]:
    """The training loss and the flat gradient of the networks as training runs them (fast twins,
    channels_last, autocast for bf16), from the same weights and reparameterisation noise."""
    model = training_networks(copy.deepcopy(model).to(memory_format=torch.channels_last), CPU, precision)
    torch.manual_seed(7)
    loss = training_loss(model(x.contiguous(memory_format=torch.channels_last)))
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.detach(), grads, model


def test_forced_fp32_and_bf16_give_the_same_loss_within_bf16_rounding():
    torch.manual_seed(0)
    model = VAE(ModelConfig()).train()  # the default networks: gated blocks, width 96, the VampPrior
    x = torch.bernoulli(torch.rand(32, 1, 32, 32))
    loss32, grads32, net32 = _loss_and_grads(model, x, "fp32")
    loss16, grads16, net16 = _loss_and_grads(model, x, "bf16")
    assert isinstance(net16.encoder, AutocastNetwork) and not isinstance(net32.encoder, AutocastNetwork)
    # bf16 keeps 8 bits of mantissa: the loss moved (the networks did run in bf16), by 3.6e-4 of
    # itself when measured; the bound allows five times that.
    assert loss16 != loss32
    assert abs(loss16 - loss32) / abs(loss32) < 2e-3
    assert torch.nn.functional.cosine_similarity(grads16, grads32, dim=0) > 0.999  # 0.99995 measured
    assert all(p.dtype == torch.float32 for p in net16.parameters())  # master weights stay fp32


def test_bf16_networks_hand_fp32_to_the_distributions_and_full_precision_turns_them_off():
    torch.manual_seed(0)
    model = training_networks(VAE(ModelConfig(blocks="plain", width=32)).eval(), CPU, "bf16")
    x = torch.bernoulli(torch.rand(4, 1, 32, 32))
    with torch.no_grad():
        q = model.encode(x)
        logits = model.decode(q.loc[:, 0]).logits
        with full_precision(model):
            exact = model.decode(q.loc[:, 0]).logits
        again = model.decode(q.loc[:, 0]).logits
    assert q.loc.dtype == logits.dtype == exact.dtype == torch.float32
    assert not torch.equal(logits, exact)  # bf16 outside the block, fp32 inside it
    torch.testing.assert_close(logits, exact, rtol=0.05, atol=0.05)
    assert torch.equal(again, logits)  # and autocast again after it
    assert isinstance(network_autocast(CPU), torch.autocast)


@pytest.mark.parametrize(
    ("probes", "machine", "speedup", "expected"),
    [
        ((True, False), "x86_64", None, "bf16"),  # AVX512_BF16
        ((False, True), "x86_64", None, "bf16"),  # AMX
        ((False, False), "x86_64", None, "fp32"),  # an x86 CPU without bf16 units: unchanged
        (None, "aarch64", 2.4, "bf16"),  # flags unknown: the micro-benchmark decides
        (None, "aarch64", 1.0, "fp32"),
    ],
)
def test_auto_precision_follows_the_bf16_units_or_the_micro_benchmark(monkeypatch, probes, machine, speedup, expected):
    for name, value in zip(("_is_avx512_bf16_supported", "_is_amx_tile_supported"), probes or (None, None)):
        if probes is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda value=value: value)
    monkeypatch.setattr(devices.platform, "machine", lambda: machine)
    timed = []
    monkeypatch.setattr(devices, "bf16_conv_speedup", lambda: timed.append(1) or speedup)
    devices.cpu_has_fast_bf16.cache_clear()
    try:
        assert devices.resolve_precision("auto", CPU) == expected
        assert len(timed) == (probes is None)  # the benchmark runs only where the flags are unknown
        assert devices.resolve_precision("fp32", CPU) == "fp32" and devices.resolve_precision("bf16", CPU) == "bf16"
        assert devices.resolve_precision("auto", torch.device("cuda")) == "fp32"
    finally:
        devices.cpu_has_fast_bf16.cache_clear()


def test_the_micro_benchmark_measures_a_ratio():
    speedup = devices.bf16_conv_speedup(repeats=2)
    assert 0.05 < speedup < 50
    if devices.cpu_bf16_units():  # bf16 units run the convolution faster (2.4x on the AMX machine)
        assert speedup > devices.BF16_MIN_SPEEDUP


def test_a_run_records_the_precision_it_used_and_bf16_trains_like_fp32(tmp_path):
    data = make_tiny_splits()
    runs = {}
    for precision in ("auto", "fp32", "bf16"):
        config = tiny_config(train__epochs=2, train__precision=precision, model__blocks="gated", model__width=16)
        runs[precision] = Path(vaekit.train(config, out=tmp_path / precision, data=data, progress=False))
        recorded = json.loads((runs[precision] / "config.json").read_text())["train"]["precision"]
        assert recorded == devices.resolve_precision(precision, CPU)
        assert config.train.precision == precision  # the caller's config is left as it was
    val = {p: float(read_metrics(run)[-1]["val_elbo"]) for p, run in runs.items()}
    # The same seed and data: bf16 training ends where fp32 does, to within its rounding's drift.
    assert val["bf16"] != val["fp32"]
    assert abs(val["bf16"] - val["fp32"]) < 1e-3 * abs(val["fp32"])  # 0.006 of 421 nats measured


def test_bf16_on_a_cpu_without_bf16_units_warns_and_a_resumed_run_may_move_to_fp32(tmp_path, monkeypatch, capsys):
    from vaekit.cli.flags import resumed_config
    from vaekit.cli.main import build_parser

    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)  # an AVX2-only CPU: bf16 is emulated
    data = make_tiny_splits()
    config = tiny_config(train__precision="bf16", model__width=16)
    run = Path(vaekit.train(config, out=tmp_path / "r", data=data, progress=False))
    warned = capsys.readouterr().err
    assert warned.count("vaekit: warning: this CPU has no bf16 units") == 1 and "--precision fp32" in warned
    vaekit.train(tiny_config(train__precision="auto", model__width=16), out=tmp_path / "a", data=data, progress=False)
    assert "bf16" not in capsys.readouterr().err  # auto takes fp32 there, silently

    args = build_parser().parse_args(["train", "--resume", str(run), "--precision", "fp32", "--epochs", "2"])
    vaekit.train(resumed_config(args, run), resume=run, data=data, progress=False)
    assert "warning" not in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "fp32"
    assert [int(r["epoch"]) for r in read_metrics(run)] == [1, 2]
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    assert devices.emulated_bf16_warning("bf16", CPU) is None
    assert devices.emulated_bf16_warning("bf16", torch.device("cuda")) is None
