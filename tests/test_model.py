"""Shapes and structure of the notebook's network, corrected."""

import pytest
import torch

from vaekit.config import ModelConfig
from vaekit.model import VAE
from vaekit.networks import block_widths


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
    model = VAE(ModelConfig(latent_size=8, components=2, image_size=32))
    convs = [m for m in model.encoder.body.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) and c.bias is None for c in convs)
    assert model.encoder.loc_head.kernel_size == (2, 2)
    assert model.encoder.logits_head.out_channels == 2  # sized by K, not latent_size
    ups = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels) for u in ups] == [(8, 256), (256, 128), (128, 64), (64, 32), (32, 1)]
    assert ups[-1].kernel_size == (1, 1)
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in model.modules())  # logits out


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


def test_per_draw_decoding_runs_the_decoder_once_per_component_and_sample():
    # Training decodes each draw (component k, sample s) on its own B latents, so the decoder's
    # BatchNorm normalises over one latent per image whatever K and S are. The reference is
    # an explicit loop over the draws calling the decoder network itself.
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=4, components=3, image_size=28)).train()
    calls = []
    model.decoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    z = torch.randn(5, 3, 4)  # (B, K, D)
    got = model.decode(z, per_draw_of=0).logits  # (B, K, 1, 28, 28)
    assert calls == [5, 5, 5]
    for k in range(3):
        torch.testing.assert_close(got[:, k], model.crop(model.decoder(z[:, k])))
    z = torch.randn(2, 5, 3, 4)  # (S, B, K, D): the IWAE layout
    got = model.decode(z, per_draw_of=1).logits
    assert got.shape == (2, 5, 3, 1, 28, 28)
    for s in range(2):
        for k in range(3):
            torch.testing.assert_close(got[s, :, k], model.crop(model.decoder(z[s, :, k])))
    # One call on all 15 latents differs in training mode (BatchNorm statistics over 15) ...
    assert not torch.allclose(model.decode(z[0]).logits, model.decode(z[0], per_draw_of=0).logits)
    # ... and is the same in eval mode, where BatchNorm uses its running statistics.
    model.eval()
    torch.testing.assert_close(model.decode(z, per_draw_of=1).logits, model.decode(z).logits)
