"""Every speed path gives the plain path's numbers, to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import make_tiny_splits, tiny_config
from vaekit.config import ModelConfig, RunConfig
from vaekit.devices import resolve_precision
from vaekit.errors import VaekitError
from vaekit.evaluation.evaluate import evaluate_model
from vaekit.models.fast_modules import FusedHeadsConvEncoder, MatmulConvTranspose2d
from vaekit.models.networks import ConvDecoder, ConvEncoder, Gate
from vaekit.models.precision import AutocastNetwork, autocast_networks, full_precision
from vaekit.models.speed import fast_networks, fold_batchnorm, inference_model, training_networks
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import training_loss
from vaekit.objectives.decoding import decoded_log_prob


def _model(components: int = 1, latent: int = 8, blocks: str = "plain") -> VAE:
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=latent, components=components, blocks=blocks))
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


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_gate_is_glu_in_every_layout_and_precision(memory_format, dtype):
    # nn.functional.glu(h) is a * sigmoid(b) for the halves (a, b) of h's channels: an independent
    # reference for the gate's copy of b on channels_last.
    torch.manual_seed(0)
    h = torch.randn(3, 10, 5, 5, dtype=dtype).contiguous(memory_format=memory_format).requires_grad_()
    out = Gate()(h)
    ref = nn.functional.glu(h.detach().float(), dim=1)
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-2)
    assert out.dtype == dtype
    (g,) = torch.autograd.grad(out.float().square().sum(), [h])
    h64 = h.detach().double().requires_grad_()
    (g_ref,) = torch.autograd.grad(nn.functional.glu(h64, dim=1).square().sum(), [h64])
    torch.testing.assert_close(
        g.double(), g_ref, rtol=1e-5 if dtype == torch.float32 else 5e-2, atol=1e-5 if dtype == torch.float32 else 5e-2
    )


def test_fused_encoder_heads_are_the_three_convolutions():
    model = _model(components=3).eval()
    x = torch.rand(5, 1, 32, 32)
    enc = fast_networks(model).encoder
    assert type(enc) is FusedHeadsConvEncoder
    h = enc.body(x)
    loc, logvar, logits = enc(x)
    torch.testing.assert_close(loc, enc.loc_head(h).reshape(loc.shape), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar, enc.logvar_head(h).reshape(logvar.shape), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, enc.logits_head(h).reshape(logits.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("components,blocks", [(1, "plain"), (3, "plain"), (1, "gated")])
def test_folded_batchnorm_matches_eval_mode(components, blocks):
    model = _model(components, blocks=blocks)
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


@pytest.mark.parametrize("blocks", ["plain", "gated"])
def test_the_inference_copy_decodes_only_the_data_pixels(blocks):
    model = _model(blocks=blocks)  # 28-pixel data in a 32-pixel frame
    fast, uncropped = inference_model(model), inference_model(model, crop=False)
    assert fast.decoder_crops and not uncropped.decoder_crops and not model.decoder_crops
    assert model.decoder.body[-1][0].padding == (1, 1)  # the original is left as it was
    model.eval()
    z = torch.randn(6, 8)
    x = torch.bernoulli(torch.rand(6, 1, 28, 28))
    with torch.inference_mode():
        params = fast.decoder(z)
        assert params.shape == (6, 1, 28, 28)
        # Independent: the eval-mode model's whole 32x32 output, the frame sliced off by hand.
        torch.testing.assert_close(params, model.decoder(z)[..., 2:-2, 2:-2], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast.decode(z).log_prob(x), uncropped.decode(z).log_prob(x), rtol=1e-5, atol=1e-4)


def test_without_a_frame_or_with_a_users_decoder_nothing_is_cropped_in_the_decoder():
    model = VAE(ModelConfig(latent_size=8, image_size=32))
    assert model.border == 0 and not inference_model(model).decoder_crops
    own = VAE(ModelConfig(latent_size=8), decoder=nn.Sequential(copy.deepcopy(model.decoder)))
    fast = inference_model(own)
    assert not fast.decoder_crops and fast.decoder[0].body[-1][0].padding == (1, 1)
    with torch.inference_mode():
        assert fast.decode(torch.randn(2, 8)).logits.shape == (2, 1, 28, 28)


@pytest.mark.parametrize("levels", [1, 2])
def test_fast_evaluation_gives_the_same_numbers(levels):
    # At two levels the lower group's posterior and prior also go through the folded twins.
    model = VAE(ModelConfig(latent_size=4, image_size=28, levels=levels, group_channels=2))
    images = make_tiny_splits(n=80).test.images
    plain = evaluate_model(model, images, binarize=True, samples=8, batch_size=4, progress=False)
    fast = evaluate_model(model, images, binarize=True, samples=8, batch_size=4, progress=False, fast=True)
    for key in ("elbo", "nll"):
        assert fast["test"][key]["mean"] == pytest.approx(plain["test"][key]["mean"], rel=1e-5)
    if levels > 1:
        for group in ("z2", "z1"):
            assert fast["kl_groups"][group]["mean"] == pytest.approx(plain["kl_groups"][group]["mean"], rel=1e-4)


@pytest.mark.parametrize("levels", [1, 2])
def test_compiled_evaluation_gives_the_fast_numbers(levels, graphs):
    # `evaluate --compile` compiles the fast copy's networks, a hierarchy's group cells inside its
    # decoder; `graphs` records each graph and runs it as traced, so the numbers are the fast
    # path's bit for bit (inductor's kernels round differently).
    torch.manual_seed(0)
    config = ModelConfig(latent_size=4, image_size=28, levels=levels, group_channels=2, blocks="gated", width=16)
    model = VAE(config)
    with torch.no_grad():  # away from the zero-initialised posterior shifts, so every group carries KL
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    images = make_tiny_splits(n=80).test.images
    kwargs = dict(binarize=True, samples=8, batch_size=4, progress=False)
    fast = evaluate_model(model, images, fast=True, **kwargs)
    compiled = evaluate_model(model, images, compile=True, **kwargs)
    assert graphs  # the networks did go through torch.compile
    for key in ("elbo", "nll"):
        assert compiled["test"][key]["mean"] == fast["test"][key]["mean"]
    if levels > 1:
        assert compiled["kl_groups"]["z1"]["mean"] == fast["kl_groups"]["z1"]["mean"] > 0.1


@pytest.fixture
def threads():
    """Sets intra-op threads for one test and puts the count back."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("piece_images", [1, 3, 8, 1000])
def test_decoding_in_pieces_gives_the_one_call_log_prob(piece_images, threads, monkeypatch):
    import vaekit.objectives.decoding as decoding

    model = inference_model(_model(components=2))
    x = torch.bernoulli(torch.rand(4, 1, 32, 32))
    z = torch.randn(5, 4, 8)  # 5 samples of 4 images: pieces of 1 or 2 samples, or all 5 at once
    with torch.no_grad():
        expected = model.decode(z).log_prob(model.crop(x)).double()  # (5, 4), one call
    monkeypatch.setattr(decoding, "CPU_PIECE_IMAGES", piece_images)
    per_thread_count = []
    for count in (1, 2, 3):
        threads(count)
        with torch.inference_mode():
            got = decoded_log_prob(model, z, model.crop(x))
        assert got.shape == (5, 4) and not got.requires_grad
        per_thread_count.append(got)
    torch.testing.assert_close(per_thread_count[0].double(), expected, rtol=1e-5, atol=1e-3)
    # The pieces, not the workers, fix the arithmetic: any thread count gives the same bits.
    assert torch.equal(per_thread_count[0], per_thread_count[1])
    assert torch.equal(per_thread_count[0], per_thread_count[2])


def test_decoding_in_pieces_keeps_no_graph_when_the_caller_tracks_gradients(threads, monkeypatch):
    import vaekit.objectives.decoding as decoding

    monkeypatch.setattr(decoding, "CPU_PIECE_IMAGES", 2)
    threads(2)
    model = _model().eval()
    got = decoded_log_prob(model, torch.randn(3, 2, 8), model.crop(torch.bernoulli(torch.rand(2, 1, 32, 32))))
    assert got.grad_fn is None and not got.requires_grad


def _plain_and_fast(components: int, blocks: str = "plain") -> tuple[VAE, VAE]:
    plain = _model(components, blocks=blocks)
    rng = torch.random.get_rng_state()
    fast = fast_networks(copy.deepcopy(plain))
    assert torch.equal(torch.random.get_rng_state(), rng)  # swapping initialises nothing
    return plain, fast


@pytest.mark.parametrize("components", [1, 3])
def test_fast_networks_swap_modules_but_keep_the_state(components):
    plain, fast = _plain_and_fast(components)
    assert type(plain.encoder) is ConvEncoder and type(fast.encoder) is FusedHeadsConvEncoder
    swapped = [name for name, m in fast.named_modules() if type(m) is MatmulConvTranspose2d]
    assert swapped == ["decoder.body.0.0", "decoder.head"]  # the 1x1 input and the 1x1 kernel
    assert not any(type(m) is MatmulConvTranspose2d for m in plain.modules())  # the plain model stays plain
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in fast.state_dict().items())
    model = _model(components)
    params = dict(model.named_parameters())
    fast_networks(model)  # in place: the same parameter objects, so an optimiser built before still steps them
    assert all(p is params[n] for n, p in model.named_parameters())
    assert model.training


@pytest.mark.parametrize("components,blocks", [(1, "plain"), (3, "plain"), (1, "gated")])
def test_fast_networks_give_the_plain_loss_and_gradients(components, blocks):
    # In float64, so that what is compared is the function, not float32 rounding (which BatchNorm
    # over 12 images amplifies to ~1e-4 of a gradient's scale in some draws).
    plain, fast = (m.double() for m in _plain_and_fast(components, blocks))
    x = torch.bernoulli(torch.rand(12, 1, 32, 32)).double()
    for memory_format in (torch.contiguous_format, torch.channels_last):
        loss_a, grads_a = _loss_and_grads(plain, x, memory_format)
        loss_b, grads_b = _loss_and_grads(fast, x, memory_format)
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=1e-9)
        assert grads_a.keys() <= grads_b.keys()
        for name in grads_b.keys() - grads_a.keys():  # the unused K=1 weight head: zero through the fused GEMM
            assert not grads_b[name].any(), name
        for name in grads_a:
            scale = grads_a[name].abs().max().clamp_min(1e-3)
            assert (grads_b[name] - grads_a[name]).abs().max() <= 1e-9 * scale, name


def test_fast_networks_leave_a_users_networks_alone():
    config = ModelConfig(latent_size=4, image_size=28)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 8))
    decoder = nn.Sequential(nn.Unflatten(1, (4, 1, 1)), nn.ConvTranspose2d(4, 1, 32))  # one a twin could take
    model = VAE(config, encoder=encoder, decoder=decoder)
    fast_networks(model)
    assert model.encoder is encoder and type(model.decoder[1]) is nn.ConvTranspose2d
    explicit = fast_networks(VAE(config, encoder=ConvEncoder(1, 32, 4, 1, 32), decoder=ConvDecoder(1, 32, 4, 32)))
    assert type(explicit.encoder) is FusedHeadsConvEncoder  # the built-in classes, passed in: as before


def test_full_precision_takes_autocast_off_for_the_block_only():
    model = autocast_networks(_model())
    encoder_class, params = type(model.encoder), list(model.parameters())
    with full_precision(model):
        assert type(model.encoder) is ConvEncoder and type(model.decoder) is ConvDecoder
    assert type(model.encoder) is encoder_class and type(model.encoder).__name__ == "AutocastConvEncoder"
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert model.state_dict().keys() == _model().state_dict().keys()


def test_training_runs_the_fast_twins(tmp_path, monkeypatch):
    import vaekit.training.loop as train_module
    from conftest import tiny_config

    monkeypatch.setattr(train_module, "refresh_pictures", lambda *args, **kwargs: None)
    config = tiny_config(model__width=32, data__train_subset=8, train__batch_size=8)
    model = VAE(config.model)
    train_module.train(config, model=model, out=tmp_path / "run", data=make_tiny_splits(n=40), progress=False)
    assert type(model.encoder) is FusedHeadsConvEncoder and type(model.decoder.head) is MatmulConvTranspose2d


def test_fast_networks_keep_autocast_on_networks_that_had_it():
    model = fast_networks(autocast_networks(_model(components=3)))
    assert type(model.encoder).__name__ == "AutocastFusedHeadsConvEncoder"
    with full_precision(model):
        assert type(model.encoder) is FusedHeadsConvEncoder and type(model.decoder) is ConvDecoder


def test_networks_run_in_fp32_on_a_gpu_unless_bf16_is_asked_for() -> None:
    gpu = torch.device("cuda")  # only the classes are swapped: nothing runs, so no GPU is needed
    default = training_networks(VAE(tiny_config().model), gpu, resolve_precision("auto", gpu))
    bf16 = training_networks(VAE(tiny_config().model), gpu, "bf16")
    on_cpu = training_networks(VAE(tiny_config().model), torch.device("cpu"), "bf16")
    fp32_cpu = training_networks(VAE(tiny_config().model), torch.device("cpu"), "fp32")
    assert not isinstance(default.decoder, AutocastNetwork) and not isinstance(fp32_cpu.decoder, AutocastNetwork)
    assert isinstance(bf16.decoder, AutocastNetwork) and isinstance(bf16.encoder, AutocastNetwork)
    assert isinstance(on_cpu.decoder, AutocastNetwork)  # bf16 asked for runs on a CPU too
    data = tiny_config().to_dict()
    del data["train"]["precision"]  # a run from before the setting trained its networks in bf16 on a GPU
    assert RunConfig.from_dict(data).train.precision == "bf16"
    with pytest.raises(VaekitError, match="--precision"):
        tiny_config(train__precision="fp16").validate()
