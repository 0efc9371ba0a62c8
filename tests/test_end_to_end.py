"""The real thing, small: train on a few hundred real Fashion-MNIST images from the shell."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not FASHION.is_dir() and not os.environ.get("VAEKIT_DATA"),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist",
)
def test_train_on_real_fashion_mnist_then_sample(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "vaekit",
        "train",
        "--train-subset",
        "384",
        "--val-size",
        "500",  # a small real validation split: the test is about the real data path, not its size
        "--epochs",
        "2",
        "--components",
        "2",
        "--latent-size",
        "8",
        "--batch-size",
        "64",
        # The plain blocks it was written on: 12 steps take them well under an untrained model's
        # 543 nats; the gated default needs more steps than that before its eval-mode BatchNorm settles.
        "--blocks",
        "plain",
        "--width",
        "128",
        "--out",
        str(run),
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2
    # Binarised Fashion-MNIST: an untrained model sits near 784 * ln 2 = 543 nats; two tiny
    # epochs must already be well below that, and the ELBO must be a finite negative number.
    val = [float(r["val_elbo"]) for r in rows]
    assert -540 < val[-1] < 0
    assert float(rows[-1]["val_kl"]) > 0
    sample = tmp_path / "s.png"
    proc = subprocess.run(
        [sys.executable, "-m", "vaekit", "sample", str(run), "-n", "9", "--out", str(sample)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(sample).size[0] >= 3 * 28
