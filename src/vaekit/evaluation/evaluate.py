"""Numbers for a trained model: the test-set ELBO, importance-sampled NLL and sample quality, and
the run's evaluation.json (with the per-image numbers beside it)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vaekit._version import __version__
from vaekit.atomic import atomic_write_bytes, atomic_write_text
from vaekit.config import ACTIVE_GROUP_KL, group_names, registry
from vaekit.data.batching import EVAL_BINARIZE_SEED, binarize_fixed, to_float
from vaekit.devices import resolve_device
from vaekit.errors import VaekitError
from vaekit.evaluation.classifier import ClassifierSpec, data_pixels, get_classifier
from vaekit.evaluation.per_image import ARRAYS, PER_IMAGE_FILE, PerImage, arrays_sha256, indices_sha256, per_image_bytes
from vaekit.evaluation.sample_quality import quality_numbers
from vaekit.models.precision import full_precision
from vaekit.models.speed import can_crop_in_decoder, inference_model
from vaekit.objectives.bounds import elbo_terms, log_likelihood_estimate
from vaekit.objectives.usage import component_usage
from vaekit.report.pictures import missing_pictures
from vaekit.runs.run_dir import load_run, load_run_data
from vaekit.runs.shipped import is_shipped, output_dir

# --------------------------------------------------------------------------- importance-sampled NLL

EVAL_SAMPLING_SEED = 0  # default seed of the importance samples and prior samples: reruns give the same numbers
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016): Var_x(E_q[z_d]) above this counts as active


def number_kind(likelihood: str, binarized: bool) -> tuple[str, bool]:
    """What the 'nll' number is for this likelihood and data, and whether it is a true NLL.

    A likelihood of binary data (a Bernoulli) is a distribution over {0, 1}: on grey levels
    its 'log-likelihood' is a cross-entropy, not a likelihood of anything, so it must not be
    reported as one. Which case applies is read off the likelihood's registration.
    """
    spec = registry.likelihood(likelihood)
    if binarized:
        return "negative log-likelihood of the test images binarised once with a fixed seed (nats)", True
    if spec.data == "binary":
        return (
            f"{spec.title} cross-entropy on grey levels: NOT a likelihood (the {spec.title} is a "
            f"distribution over {{0,1}}); "
            "nll is not comparable with published likelihoods, and no bits/dim is given"
        ), False
    if spec.discrete:
        return f"negative log-likelihood of the 8-bit grey levels under the {spec.title} (nats)", True
    return (
        f"negative log-density of grey levels scaled to [0, 1] under the continuous {likelihood} likelihood (nats); "
        "a density, not a probability of the 8-bit data, so no bits/dim is given"
    ), False


def _mean_and_stderr(values: torch.Tensor) -> dict[str, float]:
    n = values.numel()
    stderr = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(values.mean()), "stderr": stderr}


def evaluate_model(
    model,
    images: torch.Tensor,
    binarize: bool,
    samples: int = 1000,
    batch_size: int = 250,
    chunk: int | None = None,
    seed: int = EVAL_SAMPLING_SEED,
    progress: bool = True,
    fast: bool = False,
    compile: bool = False,
    keep_per_image: bool = False,
) -> dict:
    """Per-image means and standard errors of ELBO, recon, KL, NLL and bits/dim on `images`.

    bits_per_dim is None where the NLL is not the log-probability of discrete data (see number_kind).

    With `keep_per_image` the result also holds "per_image": {"nll": ..., "elbo": ...}, float64
    numpy arrays in the order of `images` (for paired comparisons; not JSON).

    `fast` evaluates a BatchNorm-folded channels_last copy whose decoder computes only the
    data's pixels (speed.inference_model: the same numbers to float rounding, about 1.2-1.9x
    faster on CPU); `compile` also torch.compiles it.

    `images` is uint8 (N, C, P, P) as the data module holds them; with `binarize` the whole
    set is binarised once with EVAL_BINARIZE_SEED before anything else.
    """
    if samples < 1:
        raise ValueError(f"samples must be positive, got {samples}")
    model.eval()
    if fast or compile:
        model = inference_model(model, compile=compile)
    device = next(model.parameters()).device
    x_all = binarize_fixed(images.to(device), EVAL_BINARIZE_SEED) if binarize else to_float(images.to(device))
    per_image: dict[str, list[torch.Tensor]] = {"elbo": [], "recon": [], "kl": [], "log_px": []}
    kl_groups: list[torch.Tensor] = []  # (B, L) batches with levels L >= 2
    means, weights = [], []
    bar = tqdm(
        total=len(x_all) * samples,
        desc="importance samples",
        unit="",
        unit_scale=True,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    with (
        full_precision(model),
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        torch.inference_mode(),
    ):
        torch.manual_seed(seed)
        for start in range(0, len(x_all), batch_size):
            x = x_all[start : start + batch_size]
            terms = elbo_terms(model, x)
            q = model.encode(x)
            for key in ("elbo", "recon", "kl"):
                per_image[key].append(getattr(terms, key).double().cpu())
            if terms.kl_groups is not None:
                kl_groups.append(terms.kl_groups.double().cpu())
            per_image["log_px"].append(log_likelihood_estimate(model, x, samples, chunk, bar).cpu())
            means.append(q.mean.double().cpu())
            weights.append(q.weights.double().cpu())
    bar.close()
    cfg = model.config
    pixels = cfg.channels * cfg.image_size**2  # the data's own pixels, not the zero frame
    values = {k: torch.cat(v) for k, v in per_image.items()}
    nll = -values.pop("log_px")
    kind, is_likelihood = number_kind(cfg.likelihood, binarize)
    test: dict[str, dict[str, float] | None] = {k: _mean_and_stderr(v) for k, v in {**values, "nll": nll}.items()}
    # Bits/dim only where nll is the log-probability of discrete data; a density's value
    # depends on the units of x and is no code length.
    test["bits_per_dim"] = _mean_and_stderr(nll / (pixels * math.log(2))) if is_likelihood else None
    posterior_means = torch.cat(means)  # (N, D)
    if len(posterior_means) > 1:
        variance = posterior_means.var(0, unbiased=True)
    else:
        variance = torch.zeros(posterior_means.shape[1], dtype=torch.float64)
    result = {
        "test": test,
        "number_kind": kind,
        "nll_is_likelihood": is_likelihood,
        "pixels": pixels,
        "images": len(x_all),
        "active_units": {  # of the top group (a hierarchy's lower groups: kl_groups' "active")
            "group": group_names(cfg.levels)[0],
            "count": int((variance > ACTIVE_UNIT_THRESHOLD).sum()),
            "of": int(variance.numel()),
            "threshold": ACTIVE_UNIT_THRESHOLD,
            "variance_of_posterior_mean": [round(float(v), 6) for v in variance],
        },
    }
    if kl_groups:
        result["kl_groups"] = group_kl_summary(torch.cat(kl_groups), group_names(cfg.levels))
    if cfg.components > 1:
        usage = component_usage(torch.cat(weights))
        result["components"] = {
            "mean_weights": usage["mean_weights"],
            "entropy_of_mean_weights": usage["usage_entropy"],
            "mean_image_entropy": usage["usage_image_entropy"],
            "effective_components": usage["usage_effective"],
            "max_entropy": math.log(cfg.components),
        }
    if keep_per_image:
        result["per_image"] = {"nll": nll.numpy(), "elbo": values["elbo"].numpy()}
    return result


def group_kl_summary(kl_groups: torch.Tensor, names: list[str]) -> dict[str, dict]:
    """Each latent group's KL (per-image mean and standard error, nats) and whether it is active
    (mean at least ACTIVE_GROUP_KL), from per-image KLs (N, L), top group first."""
    out = {}
    for name, column in zip(names, kl_groups.double().unbind(-1)):
        summary = _mean_and_stderr(column)
        out[name] = {**summary, "active": summary["mean"] >= ACTIVE_GROUP_KL}
    return out


# --------------------------------------------------------------------------- sample quality


@torch.no_grad()
def sample_quality(
    model, data, classifier, n: int = 10_000, seed: int = EVAL_SAMPLING_SEED, k: int = 3, batch_size: int = 500
) -> dict:
    """Fréchet distance and k-NN precision/recall in the classifier's features.

    The model's N prior samples (decoded means) against the test set, and N training images
    against the test set: the floor a model that reproduced the data would reach.
    """
    test = data_pixels(data.test.images, data.image_size)
    n = min(n, len(test), len(data.train))
    real = classifier.features(test)
    model.eval()
    device = next(model.parameters()).device
    with full_precision(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        fake_images = torch.cat([model.sample(min(batch_size, n - i)).float().cpu() for i in range(0, n, batch_size)])
        pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n]
    train_images = data_pixels(data.train.images[pick], data.image_size)
    return {
        "samples": n,
        "test_images": len(test),
        "k": k,
        "seed": seed,
        "sample_images": "means of p(x|z) for z drawn from the prior, against grey-level test images",
        "classifier": classifier.describe(),
        "model_vs_test": quality_numbers(real, classifier.features(fake_images), k),
        "train_vs_test_floor": quality_numbers(real, classifier.features(train_images), k),
    }


# --------------------------------------------------------------------------- a whole run


def evaluate_run(
    run_dir,
    samples: int = 1000,
    test_subset: int | None = None,
    batch_size: int = 250,
    json_path=None,
    data=None,
    quality: bool = True,
    quality_samples: int = 10_000,
    classifier_spec=None,
    seed: int = EVAL_SAMPLING_SEED,
    progress: bool = True,
    fast: bool = True,
    compile: bool = False,
    checkpoint: str = "best",
    encoder: torch.nn.Module | None = None,
    decoder: torch.nn.Module | None = None,
    device: str = "auto",
) -> dict:
    """Evaluates a run directory; writes RUN/evaluation.json (and `json_path`) and returns the dict,
    and the per-image NLLs and ELBOs to RUN/evaluation_per_image.npz (see per_image.py).

    `checkpoint` is "best" (the best validation epoch; the latest where none was kept) or "latest"
    (the last weights saved, e.g. where a time budget ended the run mid-epoch, as quality.py reads them).

    `data` (a DatasetSplits) skips loading the run's dataset by name, e.g. for generated data.
    `fast` (the default) evaluates the BatchNorm-folded channels_last copy: the same numbers to
    float rounding, about 2x faster on CPU; `compile` also torch.compiles it.
    `encoder` and `decoder`: fresh instances of a run's own networks, as vaekit.load_run takes them.
    `device`: auto (CUDA where there is one), cpu or cuda. The importance samples are drawn on
    it, so the same seed gives the same numbers only on the same kind of device.
    """
    if samples < 1:
        raise VaekitError(f"--nll-samples must be positive, got {samples}")
    if test_subset is not None and test_subset < 2:
        raise VaekitError(f"--test-subset must be at least 2 images, got {test_subset}")
    if batch_size < 1:
        raise VaekitError(f"--batch-size must be positive, got {batch_size}")
    if checkpoint not in ("best", "latest"):
        raise VaekitError(f"--checkpoint must be 'best' or 'latest', got {checkpoint!r}")
    on = resolve_device(device)
    run = load_run(run_dir, checkpoint, device=on, encoder=encoder, decoder=decoder)
    data = data or load_run_data(run.config)
    images = data.test.images[:test_subset] if test_subset else data.test.images
    started = time.perf_counter()
    result = evaluate_model(
        run.model,
        images,
        run.config.data.binarize,
        samples,
        batch_size,
        seed=seed,
        progress=progress,
        fast=fast,
        compile=compile,
        keep_per_image=True,
    )
    seconds = {"bounds_and_nll": time.perf_counter() - started}
    values = result.pop("per_image")
    per_image = PerImage(
        index=np.arange(len(images), dtype=np.int64),  # the first N of the test split
        elbo=values["elbo"],
        nll=values.get("nll"),
    )
    selection = f"first {len(images)} of {len(data.test)}" if len(images) < len(data.test) else f"all {len(images)}"
    out = {
        "settings": {
            "nll_samples": samples,
            "test_subset": test_subset,
            "test_images": len(images),
            "test_set_size": len(data.test),
            "test_selection": selection,
            "test_indices_sha256": indices_sha256(per_image.index),
            "binarized": run.config.data.binarize,
            "binarize_seed": EVAL_BINARIZE_SEED if run.config.data.binarize else None,
            "sampling_seed": seed,
            "batch_size": batch_size,
            "dataset": data.name,
            "dataset_checksum": data.checksum,
            "likelihood": run.config.model.likelihood,
            "checkpoint": run.checkpoint,
            "checkpoint_step": run.state.get("step"),
            "checkpoint_epoch": run.state.get("epoch"),
            "vaekit_version": __version__,
            "proposal": "q(z|x), z_s drawn from the full mixture"
            + (", each lower group from q(z_l | z_>l, x)" if run.model.levels > 1 else ""),
            "network_path": _network_path(run.model, fast, compile),
            "device": on.type,
        },
        **result,
        "per_image": {
            "file": PER_IMAGE_FILE,
            "arrays_sha256": arrays_sha256(per_image),
            "arrays": {k: ARRAYS[k] for k in ("index", *values)},
        },
    }
    if quality:
        started = time.perf_counter()
        out["sample_quality"] = _quality_or_reason(run.model, data, quality_samples, seed, classifier_spec, progress)
        seconds["sample_quality"] = time.perf_counter() - started
    out["seconds"] = seconds
    text = json.dumps(out, indent=2) + "\n"
    # The per-image file first: evaluation.json names its hash, so an interruption between the
    # two writes leaves a pair that `vaekit compare` refuses rather than mismatches.
    out_dir = output_dir(run.path)
    atomic_write_bytes(out_dir / PER_IMAGE_FILE, per_image_bytes(per_image))
    atomic_write_text(out_dir / "evaluation.json", text)
    if json_path:
        atomic_write_text(Path(json_path), text)
    if not is_shipped(run.path):
        missing_pictures(run, data)
    return out


def _network_path(model, fast: bool, compile: bool) -> str:
    """What speed.inference_model did to the networks, for evaluation.json."""
    if not (fast or compile):
        return "plain eval mode"
    layout = "" if model.custom_networks else ", channels_last"  # not applied to a user's networks
    crop = ", frame cropped in the decoder" if can_crop_in_decoder(model) else ""
    return ("compiled, " if compile else "") + "BatchNorm folded" + crop + layout


def _quality_or_reason(model, data, n: int, seed: int, spec, progress: bool) -> dict:
    if data.train.labels is None or data.test.labels is None:
        return {"skipped": f"dataset {data.name} has no class labels, which the feature classifier needs"}
    classifier = get_classifier(data, spec or ClassifierSpec(), progress=progress)
    return sample_quality(model, data, classifier, n, seed)
