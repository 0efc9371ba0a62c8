"""The command line on generated data: train, sample, reconstruct, and a few error paths."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import blob_images
from vaekit.cli.main import main


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    images, labels = blob_images(200)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, images=images[:, 0], labels=labels)
    return path


@pytest.fixture(scope="module")
def trained_run(npz_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(
        [
            "train",
            "--dataset",
            f"npz:{npz_data}",
            "--latent-size",
            "4",
            "--components",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    return out


def test_train_writes_a_run(trained_run):
    assert (trained_run / "config.json").is_file()
    assert (trained_run / "metrics.csv").read_text().count("\n") == 2  # header + one epoch


def test_sample_writes_a_grid(trained_run, tmp_path):
    out = tmp_path / "s.png"
    assert main(["sample", str(trained_run), "-n", "16", "--out", str(out)]) == 0
    w, h = Image.open(out).size
    assert w > 28 * 3 and h > 28 * 3


def test_reconstruct_writes_pairs(trained_run, tmp_path):
    out = tmp_path / "r.png"
    assert main(["reconstruct", str(trained_run), "-n", "8", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 0


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--latent-size", "0"], "--latent-size must be a positive integer"),
        (["train", "--components", "0"], "--components must be a positive integer"),
        (["train", "--lr", "-1"], "--lr must be a positive number"),
        (["sample", "/nonexistent/run"], "does not exist"),
        (["train", "--dataset", "nope"], "unknown dataset"),
        (["train", "--epochs", "x"], "invalid int value"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    argv = argv + (["--out", str(tmp_path / "o")] if argv[0] == "train" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_no_traceback_from_the_console_entry(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vaekit", "sample", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not a vaekit run directory" in proc.stderr


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--width", "100"], "--width must be a multiple of 8"),
        (["train", "--width", "0"], "--width must be a positive integer"),
    ],
)
def test_bad_width_is_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and not (tmp_path / "o").exists()
