"""`vaekit evaluate`, `interpolate`, `report` and `train --tensorboard` on generated data."""

import json
import sys
import types

import numpy as np
import pytest

from conftest import blob_images, make_tiny_splits, tiny_config
from vaekit.cli.main import main
from vaekit.runs.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(path))
    yield path
    patch.undo()


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache):
    images, labels = blob_images(300)
    data = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(data, images=images[:, 0], labels=labels)
    out = tmp_path_factory.mktemp("runs") / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                f"npz:{data}",
                "--latent-size",
                "2",
                "--components",
                "3",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    return out


def test_training_draws_the_latent_pictures(run):
    assert (run / "loss_curves.png").is_file()
    assert (run / "latent_scatter.png").is_file() and (run / "component_usage.png").is_file()


def test_evaluate_prints_and_writes_the_numbers(run, tmp_path, capsys, cache):
    extra = tmp_path / "eval.json"
    code = main(
        [
            "evaluate",
            str(run),
            "--nll-samples",
            "16",
            "--test-subset",
            "20",
            "--batch-size",
            "8",
            "--json",
            str(extra),
            "--quality-samples",
            "25",
            "--classifier-epochs",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert "+-" in summary["nll"] and summary["active_units"].endswith("of 2")
    saved = json.loads((run / "evaluation.json").read_text())
    assert json.loads(extra.read_text()) == saved
    assert saved["settings"]["nll_samples"] == 16 and saved["settings"]["test_images"] == 20
    assert len(saved["components"]["mean_weights"]) == 3
    quality = saved["sample_quality"]
    assert quality["samples"] == 25 and quality["classifier"]["path"].startswith(str(cache))
    assert set(quality["model_vs_test"]) == {"frechet_distance", "precision", "recall"}
    assert quality["train_vs_test_floor"]["frechet_distance"] >= 0


def test_evaluate_refuses_bad_arguments(run, capsys):
    assert main(["evaluate", str(run), "--nll-samples", "0", "--no-quality"]) == 2
    assert "--nll-samples must be positive" in capsys.readouterr().err
    assert main(["evaluate", str(run.parent / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_reads_the_checkpoint_named_on_the_command_line(run, capsys):
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--nll-samples",
                "4",
                "--test-subset",
                "10",
                "--no-quality",
                "--quiet",
                "--checkpoint",
                "latest",
            ]
        )
        == 0
    )
    settings = json.loads((run / "evaluation.json").read_text())["settings"]
    assert (
        settings["checkpoint"] == "latest"
        and settings["checkpoint_step"] == load_checkpoint(run, "latest").state["step"]
    )


def test_evaluate_headline_is_one_line_with_the_saved_nll_and_its_protocol(run, capsys):
    assert (
        main(
            ["evaluate", str(run), "--nll-samples", "6", "--test-subset", "12", "--no-quality", "--quiet", "--headline"]
        )
        == 0
    )
    out = capsys.readouterr().out.strip()
    saved = json.loads((run / "evaluation.json").read_text())
    nll = saved["test"]["nll"]
    assert "\n" not in out and out.startswith(
        f"test NLL {nll['mean']:.2f} ± {nll['stderr']:.2f} nats on 12 test images"
    )
    assert "S=6 importance samples" in out and "first 12 of" in out
    assert "papers" not in out  # generated npz data: no published number to stand beside


def test_interpolate_and_report(run, capsys):
    assert main(["evaluate", str(run), "--nll-samples", "4", "--test-subset", "10", "--no-quality", "--quiet"]) == 0
    (run / "interpolations.png").unlink(missing_ok=True)
    assert main(["interpolate", str(run), "--pairs", "2"]) == 0
    assert (run / "interpolations.png").is_file()
    (run / "interpolations.png").unlink()  # `report` draws what is missing
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    for figure in ('id="interpolations"', 'id="latent_scatter"', 'id="component_usage"', 'id="loss_curves"'):
        assert figure in page
    assert "test.nll.mean" in page and "settings.nll_samples" in page
    assert "not generated" not in page


def test_tensorboard_missing_is_one_line_and_leaves_no_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    out = tmp_path / "tb"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--tensorboard", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install tensorboard" in err
    assert not out.exists()


class _FakeWriter:
    """Records what the trainer would send to TensorBoard."""

    instances: list["_FakeWriter"] = []

    def __init__(self, log_dir):
        self.log_dir, self.calls = log_dir, []
        _FakeWriter.instances.append(self)

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def test_tensorboard_gets_scalars_images_and_the_embedding(tmp_path, monkeypatch):
    from vaekit.training.loop import train

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_FakeWriter))
    run = train(tiny_config(train__tensorboard=True), out=tmp_path / "run", data=make_tiny_splits(), progress=False)
    writer = _FakeWriter.instances[-1]
    assert writer.log_dir == str(run / "tensorboard")
    names = [c[0] for c in writer.calls]
    steps = [c for c in writer.calls if c[0] == "add_scalar" and c[1][0] == "train/loss"]
    assert len(steps) == 6  # 192 training images / batch 32, one scalar per step
    assert names.count("add_images") == 2 and "add_embedding" in names and names[-1] == "close"
    embedding = next(c for c in writer.calls if c[0] == "add_embedding")
    assert embedding[2]["label_img"].shape[1:] == (1, 28, 28)


def test_tensorboard_logs_a_hierarchys_kl_per_group_as_in_metrics_csv(tmp_path, monkeypatch):
    from vaekit.training.loop import train

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_FakeWriter))
    config = tiny_config(train__tensorboard=True, model__levels=2, model__group_channels=2, model__width=16)
    run = train(config, out=tmp_path / "run", data=make_tiny_splits(), progress=False)
    scalars = {c[1][0]: c[1][1] for c in _FakeWriter.instances[-1].calls if c[0] == "add_scalar"}
    header, row = (run / "metrics.csv").read_text().splitlines()[:2]
    logged = dict(zip(header.split(","), row.split(",")))
    for group in ("z2", "z1"):
        assert scalars[f"val/kl_{group}"] == pytest.approx(float(logged[f"val_kl_{group}"]), rel=1e-4)
    assert scalars["val/kl_z2"] + scalars["val/kl_z1"] == pytest.approx(scalars["val/kl"], rel=1e-4)


def test_a_density_gets_no_bits_per_dim_in_the_json_the_printout_or_the_report(tmp_path, capsys):
    images, labels = blob_images(100)
    np.savez(tmp_path / "blobs.npz", images=images[:, 0], labels=labels)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                f"npz:{tmp_path / 'blobs.npz'}",
                "--likelihood",
                "gaussian",
                "--latent-size",
                "2",
                "--width",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(run), "--nll-samples", "4", "--test-subset", "10", "--no-quality", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "evaluation.json").read_text())
    assert "bits_per_dim" not in summary and "nll" in summary and "no bits/dim" in summary["number_kind"]
    assert saved["test"]["bits_per_dim"] is None and "no bits/dim" in saved["number_kind"]
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "bits_per_dim" not in page and "no bits/dim is given" in page and "test.nll" in page
