"""Every speed path gives the plain path's numbers, to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vaekit.batching import binarize_fixed
from vaekit.config import ModelConfig
from vaekit.evaluate import evaluate_model
from vaekit.model import VAE
from vaekit.networks import MatmulConvTranspose2d
from vaekit.objectives import training_loss
from vaekit.speed import fold_batchnorm, inference_model, network_autocast

from conftest import make_tiny_splits


def _model(components: int = 1, latent: int = 8) -> VAE:
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=latent, components=components))
    model.train()
    with torch.no_grad():  # BatchNorm statistics far from their initial 0/1, so folding is tested
        for _ in range(3):
            model(torch.bernoulli(torch.rand(16, 1, 32, 32)))
    return model


def _loss_and_grads(model: VAE, x: torch.Tensor, memory_format) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = copy.deepcopy(model).to(memory_format=memory_format)
    torch.manual_seed(7)  # the same reparameterisation noise
    loss = training_loss(model(x.contiguous(memory_format=memory_format)))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("components", [1, 3])
def test_channels_last_gives_the_contiguous_loss_and_gradients(components):
    model = _model(components)
    x = torch.bernoulli(torch.rand(12, 1, 32, 32))
    loss_a, grads_a = _loss_and_grads(model, x, torch.contiguous_format)
    loss_b, grads_b = _loss_and_grads(model, x, torch.channels_last)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-3)
    assert grads_a.keys() == grads_b.keys()
    # Gradients through BatchNorm's backward cancel heavily in fp32 (both layouts are ~1e-3
    # from an fp64 reference there), so they are held to 1% of their largest entry.
    for name in grads_a:
        scale = grads_a[name].abs().max().clamp_min(1e-3)
        assert (grads_b[name] - grads_a[name]).abs().max() <= 1e-2 * scale, name


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("kernel,size", [(4, 1), (1, 8)])  # latent -> 4x4 grid; the 1x1 head
def test_matmul_conv_transpose_is_the_convolution(memory_format, kernel, size):
    torch.manual_seed(0)
    fast = MatmulConvTranspose2d(6, 5, kernel, 1, 0, bias=True).to(memory_format=memory_format)
    x = torch.randn(3, 6, size, size).contiguous(memory_format=memory_format).requires_grad_()
    out = fast(x)
    ref = nn.ConvTranspose2d.forward(fast, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=memory_format)
    g_fast = torch.autograd.grad(out.square().sum(), [x, fast.weight, fast.bias])
    g_ref = torch.autograd.grad(ref.square().sum(), [x, fast.weight, fast.bias])
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fused_encoder_heads_are_the_three_convolutions():
    model = _model(components=3).eval()
    x = torch.rand(5, 1, 32, 32)
    enc = model.encoder
    h = enc.body(x)
    loc, logvar, logits = enc(x)
    torch.testing.assert_close(loc, enc.loc_head(h).reshape(loc.shape), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar, enc.logvar_head(h).reshape(logvar.shape), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, enc.logits_head(h).reshape(logits.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("components", [1, 3])
def test_folded_batchnorm_matches_eval_mode(components):
    model = _model(components)
    folded = fold_batchnorm(model)
    assert model.training and not folded.training  # the original is left as it was
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    model.eval()
    x = torch.bernoulli(torch.rand(10, 1, 32, 32))
    with torch.inference_mode():
        q_a, q_b = model.encode(x), folded.encode(x)
        for a, b in ((q_a.loc, q_b.loc), (q_a.scale, q_b.scale), (q_a.logits, q_b.logits)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        z = q_a.loc[:, 0]
        torch.testing.assert_close(folded.decode(z).logits, model.decode(z).logits, rtol=1e-4, atol=1e-4)
        fast = inference_model(model)  # folded and channels_last
        torch.testing.assert_close(fast.decode(z).logits, model.decode(z).logits, rtol=1e-4, atol=1e-4)


def test_fast_evaluation_gives_the_same_numbers():
    model = VAE(ModelConfig(latent_size=4, image_size=28))
    images = make_tiny_splits(n=80).test.images
    plain = evaluate_model(model, images, binarize=True, samples=8, batch_size=4, progress=False)
    fast = evaluate_model(model, images, binarize=True, samples=8, batch_size=4, progress=False, fast=True)
    for key in ("elbo", "nll"):
        assert fast["test"][key]["mean"] == pytest.approx(plain["test"][key]["mean"], rel=1e-5)


def test_autocast_is_a_no_op_off_cuda():
    model = _model().eval()
    x = binarize_fixed((torch.rand(4, 1, 32, 32) * 255).to(torch.uint8), 0)
    with torch.inference_mode():
        ref = model.decode(model.encode(x).loc[:, 0]).logits
        model.autocast = True
        out = model.decode(model.encode(x).loc[:, 0]).logits
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    assert isinstance(network_autocast(torch.device("cpu")), type(network_autocast(torch.device("cpu"), False)))
