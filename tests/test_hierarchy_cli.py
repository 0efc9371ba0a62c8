"""Every command on a hierarchy (--levels 3): train, resume, sample at a temperature, reconstruct,
interpolate, evaluate (per-group KL that adds up to the reported ELBO), compare, report, load_run."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import blob_images
from vaekit import load_run
from vaekit.cli.main import main
from vaekit.data.batching import binarize_fixed
from vaekit.evaluation.evaluate import EVAL_BINARIZE_SEED, EVAL_SAMPLING_SEED, evaluate_model
from vaekit.objectives.bounds import elbo_terms
from vaekit.runs.run_dir import load_run_data

TRAIN = ["--latent-size", "4", "--width", "32", "--blocks", "plain", "--prior", "vamp", "--prior-components", "5"]
TRAIN += ["--levels", "3", "--group-channels", "2", "--batch-size", "32", "--lr-schedule", "constant", "--quiet"]


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    images, labels = blob_images(200)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, images=images[:, 0], labels=labels)
    return path


@pytest.fixture(scope="module")
def run(npz_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "hvae"
    assert main(["train", "--dataset", f"npz:{npz_data}", *TRAIN, "--epochs", "2", "--out", str(out)]) == 0
    return out


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_training_records_each_groups_kl_per_epoch(run):
    rows = _rows(run)
    assert len(rows) == 2
    for row in rows:
        groups = [float(row[f"val_kl_z{level}"]) for level in (3, 2, 1)]
        assert sum(groups) == pytest.approx(float(row["val_kl"]), rel=1e-4)
        assert all(g >= 0 for g in groups[1:])  # the lower groups' KLs are in closed form
    assert json.loads((run / "config.json").read_text())["model"]["levels"] == 3


def test_resume_continues_a_hierarchy_exactly(npz_data, run, tmp_path):
    half = tmp_path / "half"
    args = ["train", "--dataset", f"npz:{npz_data}", *TRAIN, "--out", str(half)]
    assert main([*args, "--epochs", "1"]) == 0
    assert main(["train", "--resume", str(half), "--epochs", "2", "--quiet"]) == 0
    latest = (half / "checkpoints" / "latest").read_text().strip()
    ref = (run / "checkpoints" / "latest").read_text().strip()
    a = load_file(str(half / "checkpoints" / latest / "model.safetensors"))
    b = load_file(str(run / "checkpoints" / ref / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_sample_at_lower_temperature_reconstruct_and_interpolate(run, tmp_path):
    grids = {}
    for t in ("1", "0"):
        out = tmp_path / f"s{t}.png"
        assert main(["sample", str(run), "-n", "8", "--temperature", t, "--out", str(out), "--seed", "1"]) == 0
        grids[t] = np.asarray(Image.open(out))
    assert not np.array_equal(grids["1"], grids["0"])  # the lower groups' draws matter
    assert main(["sample", str(run), "--temperature", "-1"]) == 2
    assert main(["reconstruct", str(run), "-n", "4", "--out", str(tmp_path / "r.png")]) == 0
    assert main(["interpolate", str(run), "--out", str(tmp_path / "i.png")]) == 0
    assert Image.open(tmp_path / "i.png").size[0] > 28 * 5


def test_evaluate_reports_each_groups_kl_adding_up_to_the_elbo_then_compare_and_report(run, tmp_path, capsys):
    assert main(["evaluate", str(run), "--nll-samples", "20", "--no-quality", "--quiet"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    test = result["test"]
    groups = result["kl_groups"]
    assert list(groups) == ["z3", "z2", "z1"]
    assert sum(g["mean"] for g in groups.values()) == pytest.approx(test["kl"]["mean"], rel=1e-6)
    assert test["elbo"]["mean"] == pytest.approx(test["recon"]["mean"] - test["kl"]["mean"], abs=1e-4)
    assert test["nll"]["mean"] < -test["elbo"]["mean"]  # the importance-sampled bound is above the ELBO
    assert result["settings"]["proposal"].endswith("each lower group from q(z_l | z_>l, x)")
    # Active units count the top group's dimensions; the lower groups' activity is kl_groups'.
    top_size = json.loads((run / "config.json").read_text())["model"]["latent_size"]
    assert result["active_units"]["group"] == "z3" and result["active_units"]["of"] == top_size
    assert json.loads(capsys.readouterr().out)["active_units"].endswith(f"of {top_size} in z3")
    assert main(["compare", str(run), str(run)]) == 0
    assert "0.000" in capsys.readouterr().out
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "KL per latent group" in page and (run / "group_kl.png").is_file()


def test_load_run_gives_the_hierarchy_and_the_elbo_evaluation_reports(run):
    loaded = load_run(run)
    assert loaded.model.levels == 3 and len(loaded.model.decoder.resolutions) == 2
    images = load_run_data(loaded.config).test.images[:40]
    result = evaluate_model(loaded.model, images, binarize=True, samples=5, progress=False, keep_per_image=True)
    # evaluation draws from a seeded generator: the bound itself, seeded alike, gives the same per-image ELBO
    x = binarize_fixed(images, EVAL_BINARIZE_SEED)
    torch.manual_seed(EVAL_SAMPLING_SEED)
    with torch.inference_mode():
        terms = elbo_terms(loaded.model.eval(), x)
    np.testing.assert_allclose(result["per_image"]["elbo"], terms.elbo.double().numpy(), rtol=1e-5)


def test_a_mixture_at_the_top_records_its_component_usage_per_epoch(npz_data, tmp_path):
    out = tmp_path / "k2"
    assert (
        main(["train", "--dataset", f"npz:{npz_data}", *TRAIN, "--components", "2", "--epochs", "2", "--out", str(out)])
        == 0
    )
    rows = _rows(out)
    assert len(rows) == 2
    for row in rows:
        entropy, per_image, effective = (
            float(row[c]) for c in ("usage_entropy", "usage_image_entropy", "usage_effective")
        )
        assert (
            0 <= per_image <= entropy + 1e-9 <= math.log(2) + 1e-9
        )  # each image's weights no more spread than their mean
        assert effective == pytest.approx(math.exp(entropy), rel=1e-5)  # metrics.csv keeps 6 digits
        assert float(row["val_kl_z3"]) > 0  # the top group's KL is recorded beside them
