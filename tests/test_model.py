"""Shapes and structure of the notebook's network, corrected."""

import pytest
import torch

from conftest import tiny_config
from vaekit.config import ModelConfig
from vaekit.errors import VaekitError
from vaekit.models.networks import block_widths
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import elbo_terms, iwae_terms


@pytest.mark.parametrize("components", [1, 5])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32])
def test_shapes(components, channels, size):
    model = VAE(ModelConfig(latent_size=6, components=components, channels=channels, image_size=size))
    x = torch.rand(3, channels, 32, 32)
    q = model.encode(x)
    assert q.loc.shape == (3, components, 6)
    assert q.scale.shape == (3, components, 6)
    assert q.logits.shape == (3, components)
    z = q.component_rsample()
    px = model.decode(z)
    assert px.logits.shape == (3, components, channels, size, size)  # cropped back to the data size
    assert model.sample(2).shape == (2, channels, size, size)
    assert model.reconstruct(x).shape == (3, channels, size, size)


def test_notebook_architecture():
    model = VAE(ModelConfig(latent_size=8, components=2, image_size=32, width=256, blocks="plain"))  # the notebook's
    convs = [m for m in model.encoder.body.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) and c.bias is None for c in convs)
    assert model.encoder.loc_head.kernel_size == (2, 2)
    assert model.encoder.logits_head.out_channels == 2  # sized by K, not latent_size
    ups = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels) for u in ups] == [(8, 256), (256, 128), (128, 64), (64, 32), (32, 1)]
    assert ups[-1].kernel_size == (1, 1)
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in model.modules())  # logits out


def test_gated_blocks_gate_half_the_channels_with_the_other_half():
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=8, image_size=32, width=64, blocks="gated"))
    convs = [m for m in model.encoder.body.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [2 * 8, 2 * 16, 2 * 32, 2 * 64]  # twice the plain widths
    ups = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels) for u in ups] == [(8, 128), (64, 64), (32, 32), (16, 16), (8, 1)]
    conv, bn, _ = model.encoder.body[0]
    x = torch.rand(5, 1, 32, 32)
    model.train()
    h = conv(x)  # the block by hand: batch statistics, then a * sigmoid(b) over the two halves
    mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
    h = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight[:, None, None] + bn.bias[:, None, None]
    a, b = h[:, :8], h[:, 8:]
    torch.testing.assert_close(model.encoder.body[0](x), a * torch.sigmoid(b), rtol=1e-5, atol=1e-5)
    with pytest.raises(VaekitError, match="--blocks"):
        ModelConfig(blocks="resnet").validate()


def test_block_widths_grow_with_size():
    assert block_widths(32) == [32, 64, 128, 256]
    assert block_widths(64) == [16, 32, 64, 128, 256]
    with pytest.raises(ValueError):
        block_widths(48)


def test_logvar_is_clamped_and_scale_is_its_half_exponent():
    model = VAE(ModelConfig(latent_size=4, image_size=32, logvar_min=-2.0, logvar_max=1.0))
    with torch.no_grad():
        model.encoder.logvar_head.bias.fill_(100.0)
    q = model.encode(torch.rand(2, 1, 32, 32))
    torch.testing.assert_close(q.scale, torch.full_like(q.scale, torch.exp(torch.tensor(0.5))))


def test_padding_is_not_scored():
    # Only the 28x28 data pixels enter log p(x|z): changing the frame must not change it.
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=4, image_size=28)).eval()
    x = torch.bernoulli(torch.rand(2, 1, 32, 32))
    px = model.decode(torch.randn(2, 4))
    framed = x.clone()
    framed[..., :2, :] = 1 - framed[..., :2, :]
    torch.testing.assert_close(px.log_prob(model.crop(x)), px.log_prob(model.crop(framed)))
    assert px.log_prob(model.crop(x)).shape == (2,)


def test_training_decodes_all_draws_as_one_batchnorm_batch_that_eval_mode_reproduces():
    # Components of q(z|x) sit in different places; if training normalised each component's
    # latents with their own batch statistics, the single set of running statistics used in
    # eval mode would describe none of them and eval-mode likelihoods would collapse.
    torch.manual_seed(0)
    model = VAE(tiny_config(model__components=2, model__width=32).model).train()
    for module in model.decoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics: the plain average over the calls below

    def draws(n):
        return torch.stack([torch.randn(n, 4), 6 + 0.1 * torch.randn(n, 4)], dim=1)  # (n, K=2, D)

    calls = []
    model.decoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        for _ in range(20):
            model.decode(draws(256))
        assert set(calls) == {512}  # one decoder call on all B*K latents
        z = draws(256)
        trained = model.decode(z).logits  # BatchNorm on this batch's statistics
        model.eval()
        evaluated = model.decode(z).logits  # BatchNorm on the running statistics
    assert trained.shape == (256, 2, 1, 28, 28)
    # Far below the logits' own spread: the two modes normalise with the same statistics.
    assert (trained - evaluated).abs().max() < 0.05 * trained.std()
    # The training bounds decode that way too: one call on all B*K (ELBO) or S*B*K (IWAE) draws.
    model.train()
    calls.clear()
    x = torch.bernoulli(torch.rand(6, 1, 32, 32))  # 28-pixel data in its 32-pixel frame
    elbo_terms(model, x)
    iwae_terms(model, x, None, 3)
    assert calls == [6 * 2, 3 * 6 * 2]
