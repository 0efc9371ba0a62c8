"""BatchNorm statistics re-estimated over a set of images."""

import copy

import torch

from conftest import make_tiny_splits
from vaekit.config import ModelConfig
from vaekit.data.batching import binarize_fixed
from vaekit.evaluation.bn_stats import BN_SEED, reestimate_batchnorm
from vaekit.models.vae import VAE


def test_each_batchnorm_holds_the_batch_averaged_mean_and_variance_of_its_input():
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=4, image_size=28, width=32))
    images = make_tiny_splits(n=60).train.images[:40]
    state = torch.get_rng_state()
    fixed = reestimate_batchnorm(model, images, binarize=True, batch_size=10)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert not fixed.training and model.training
    # What the first encoder BatchNorm sees is a function of the images alone: recomputed here in
    # float64, batch by batch (4 batches of 10).
    first_bn = fixed.encoder.body[0][1]
    conv = copy.deepcopy(model.encoder.body[0][0]).double()
    h = [conv(binarize_fixed(images[i : i + 10], BN_SEED + i).double()) for i in range(0, 40, 10)]
    mean = torch.stack([b.mean((0, 2, 3)) for b in h]).mean(0)
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in h]).mean(0)
    torch.testing.assert_close(first_bn.running_mean.double(), mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first_bn.running_var.double(), var, rtol=1e-4, atol=1e-5)
    before = model.encoder.body[0][1].running_mean
    assert not torch.allclose(before, first_bn.running_mean)
