"""The CUDA paths against the CPU's: training, bf16 autocast, the one-pass mixture, evaluation,
checkpoints and resume. Skipped where there is no GPU (`scripts/gpu_check.sh` runs them on one)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import blob_images, make_tiny_splits, tiny_config
from vaekit.data.batching import binarize_fixed
from vaekit.distributions.mixture import MixtureOfGaussians
from vaekit.evaluation.evaluate import EVAL_BINARIZE_SEED, evaluate_model, evaluate_run
from vaekit.models.speed import training_networks
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import elbo_terms, pathwise_terms
from vaekit.runs.checkpoint import safe_torch_load
from vaekit.runs.run_dir import load_run, read_metrics
from vaekit.training.loop import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double().cpu() - want.double().cpu()).norm() / want.double().cpu().norm())


def _checkpoint(run, which: str = "latest"):
    return run / "checkpoints" / (run / "checkpoints" / which).read_text().strip()


def test_training_on_cuda_learns_and_its_run_loads_on_the_cpu(tmp_path):
    data = make_tiny_splits()
    run = train(tiny_config(train__epochs=3, train__device="cuda"), out=tmp_path / "run", data=data, progress=False)
    rows = read_metrics(run)
    assert float(rows[-1]["train_elbo"]) > float(rows[0]["train_elbo"]) + 20
    training = safe_torch_load(_checkpoint(run) / "training_state.pt")
    assert "cuda_rng" in training  # what --resume needs to replay the GPU's noise
    loaded = load_run(run)  # the CPU by default
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())
    x = binarize_fixed(data.test.images[:8], EVAL_BINARIZE_SEED)
    assert torch.isfinite(elbo_terms(loaded.model, x).elbo).all()


@pytest.mark.parametrize("blocks", ["plain", "gated"])
def test_the_networks_under_bf16_autocast_agree_with_fp32_on_the_cpu(blocks):
    torch.manual_seed(0)
    model = VAE(tiny_config(model__components=3, model__blocks=blocks).model).eval()
    x = binarize_fixed(make_tiny_splits(60).test.images[:16], EVAL_BINARIZE_SEED)
    z = torch.randn(16, model.config.latent_size)
    with torch.no_grad():
        q_cpu, logits_cpu = model.encode(x), model.decode(z).logits
        on_gpu = model.to(CUDA)
        q_fp32, logits_fp32 = on_gpu.encode(x.to(CUDA)), on_gpu.decode(z.to(CUDA)).logits
        autocast = training_networks(on_gpu, CUDA, "bf16")
        q_bf16, logits_bf16 = autocast.encode(x.to(CUDA)), autocast.decode(z.to(CUDA)).logits
    # fp32 on the GPU (cuDNN may use TF32 for convolutions: ~1e-3), bf16's 8-bit mantissa: ~1e-2
    assert _relative_error(logits_fp32, logits_cpu) < 3e-3
    assert _relative_error(q_fp32.loc, q_cpu.loc) < 3e-3
    assert logits_bf16.dtype == torch.float32 and q_bf16.loc.dtype == torch.float32  # bounds are computed in fp32
    assert _relative_error(logits_bf16, logits_cpu) < 3e-2
    assert _relative_error(q_bf16.loc, q_cpu.loc) < 3e-2
    assert _relative_error(q_bf16.weights, q_cpu.weights) < 3e-2


def test_a_pathwise_step_on_cuda_decodes_one_latent_per_image_with_gradients_to_the_weights():
    torch.manual_seed(0)
    model = training_networks(VAE(tiny_config(model__components=5).model).to(CUDA).train(), CUDA)
    latents, posteriors = [], []
    d = model.config.latent_size
    model.decoder.register_forward_hook(lambda module, args, out: latents.append(args[0].numel() // d))
    encode = model.encode

    def keep_posterior(x):
        q = encode(x)
        q.logits.retain_grad()
        posteriors.append(q)
        return q

    model.encode = keep_posterior
    x = binarize_fixed(make_tiny_splits(60).train.images[:24].to(CUDA), 0)
    (-pathwise_terms(model, x, None).elbo.mean()).backward()
    assert latents == [24]
    logits_grad = posteriors[0].logits.grad
    assert logits_grad is not None and torch.isfinite(logits_grad).all() and logits_grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_rsample_on_cuda_has_the_closed_form_mean_gradient(dtype):
    # d/dlogits of E[a.z] = sum_k w_k a.mu_k, by Monte Carlo over 10^5 draws in 100 groups, within 4 SEs.
    g = torch.Generator().manual_seed(5)
    loc = (0.7 * torch.randn(3, 4, generator=g, dtype=dtype)).to(CUDA)
    scale = (0.4 + torch.rand(3, 4, generator=g, dtype=dtype)).to(CUDA)
    logits = torch.randn(3, generator=g, dtype=dtype).to(CUDA).requires_grad_()
    a = torch.linspace(-0.4, 0.3, 4, dtype=dtype, device=CUDA)
    exact = torch.autograd.grad((torch.softmax(logits, -1) * (loc @ a)).sum(), logits)[0]
    copies = logits.detach().expand(100, 3).clone().requires_grad_()
    torch.manual_seed(11)
    z = MixtureOfGaussians(loc.expand(100, 3, 4), scale.expand(100, 3, 4), copies).rsample((1000,))
    assert z.device.type == "cuda" and z.dtype == dtype
    grads = torch.autograd.grad((z @ a).mean(0).sum(), copies)[0].double()
    stderr = grads.std(0) / math.sqrt(100)
    assert ((grads.mean(0) - exact.double()).abs() < 4 * stderr + 1e-6).all()


def test_evaluation_on_cuda_agrees_with_the_cpu_within_monte_carlo_error(tmp_path):
    data = make_tiny_splits()
    run = train(tiny_config(train__epochs=2, train__device="cpu"), out=tmp_path / "run", data=data, progress=False)
    model = load_run(run).model
    images = data.test.images
    on_cpu = evaluate_model(model, images, True, samples=400, batch_size=16, keep_per_image=True, progress=False)
    on_gpu = evaluate_model(
        model.to(CUDA), images, True, samples=400, batch_size=16, keep_per_image=True, progress=False
    )
    diff = on_gpu["per_image"]["nll"] - on_cpu["per_image"]["nll"]  # other draws, the same images and model
    stderr = diff.std(ddof=1) / math.sqrt(len(diff))
    assert abs(diff.mean()) < 4 * stderr + 0.01, (diff.mean(), stderr)
    assert np.abs(diff).max() < 1.0  # 400 samples of a tiny model: each image's estimate to well under a nat
    result = evaluate_run(run, samples=20, data=data, quality=False, progress=False, device="cuda")
    assert result["settings"]["device"] == "cuda"


def _cli_train(npz, out, epochs: int, *extra: str) -> subprocess.CompletedProcess:
    args = ["--dataset", f"npz:{npz}", "--latent-size", "4", "--batch-size", "32", "--epochs", str(epochs)]
    args += ["--lr-schedule", "constant", "--lr-warmup", "0", "--device", "cuda", "--quiet", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vaekit", "train", *args, *extra], env=env, capture_output=True, text=True, timeout=300
    )


def test_resume_on_cuda_continues_where_the_run_stopped(tmp_path):
    images, labels = blob_images(200)
    npz = tmp_path / "blobs.npz"
    np.savez(npz, images=images[:, 0], labels=labels)
    straight, again = tmp_path / "straight", tmp_path / "again"
    for run in (straight, again):
        assert _cli_train(npz, run, 2).returncode == 0
    stopped = tmp_path / "stopped"
    assert _cli_train(npz, stopped, 1).returncode == 0
    resumed = subprocess.run(
        [sys.executable, "-m", "vaekit", "train", "--resume", str(stopped), "--epochs", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    a, b, c = (load_file(str(_checkpoint(r) / "model.safetensors")) for r in (straight, again, stopped))
    # cuDNN's convolution gradients may sum in any order, so two uninterrupted runs can differ by
    # rounding: the resumed run must be as close to the first as the second uninterrupted run is.
    spread = max(float((a[k] - b[k]).abs().max()) for k in a)
    gap = max(float((a[k] - c[k]).abs().max()) for k in a)
    assert gap <= max(10 * spread, 1e-5), (gap, spread)
    assert [r["epoch"] for r in read_metrics(stopped)] == ["1", "2"]
