"""--val-size: how many training images are held out for validation (the literature: 50,000/10,000)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import blob_images
from vaekit.cli.main import main
from vaekit.config import RunConfig
from vaekit.data import load_dataset
from vaekit.errors import VaekitError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _idx(array: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 8, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


@pytest.fixture
def idx_dir(tmp_path) -> tuple[Path, np.ndarray]:
    """A Fashion-MNIST folder with 60 training and 10 test images, each image's first pixel its index."""
    train = np.zeros((60, 28, 28), np.uint8)
    train[:, 0, 0] = np.arange(60)
    test = np.full((10, 28, 28), 200, np.uint8)
    d = tmp_path / "idx"
    d.mkdir()
    for name, array in zip(IDX_NAMES, (train, np.arange(60) % 10, test, np.arange(10))):
        (d / (name + ".gz")).write_bytes(gzip.compress(_idx(array)))
    return d, train


def _fingerprints(split) -> list[int]:
    return split.images[:, 0, 2, 2].tolist()  # 28 is padded to 32: pixel (0, 0) sits at (2, 2)


def test_idx_val_size_holds_out_the_last_images_of_the_training_file(idx_dir):
    d, _ = idx_dir
    ds = load_dataset("fashion-mnist", data_dir=str(d), download=False, val_size=10)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 10, 10)
    assert _fingerprints(ds.train) == list(range(50)) and _fingerprints(ds.val) == list(range(50, 60))
    again = load_dataset("fashion-mnist", data_dir=str(d), download=False, val_size=10)
    assert _fingerprints(again.train) == _fingerprints(ds.train) and _fingerprints(again.val) == _fingerprints(ds.val)


@pytest.mark.skipif(
    not (REAL_FMNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_splits_50000_10000_as_the_literature_does():
    ds = load_dataset("fashion-mnist", download=False, val_size=10_000)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50_000, 10_000, 10_000)
    default = load_dataset("fashion-mnist", download=False)
    assert (len(default.train), len(default.val)) == (55_000, 5_000)
    assert (ds.train.images == default.train.images[:50_000]).all()
    assert (ds.val.images[5_000:] == default.val.images).all() and (ds.test.images == default.test.images).all()


def _npz(tmp_path: Path, n: int = 50) -> str:
    images, labels = blob_images(n)
    images[:, 0, 0, 0] = np.arange(n)  # a fingerprint per image
    path = tmp_path / "blobs.npz"
    np.savez(path, images=images[:, 0], labels=labels)
    return f"npz:{path}"


def test_random_split_val_size_keeps_the_test_set_and_is_disjoint(tmp_path):
    name = _npz(tmp_path)
    default = load_dataset(name, seed=3)
    assert (len(default.train), len(default.val), len(default.test)) == (40, 5, 5)
    ds = load_dataset(name, seed=3, val_size=12)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (33, 12, 5)
    ids = [set(_fingerprints(s)) for s in (ds.train, ds.val, ds.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]) and set.union(*ids) == set(range(50))
    assert _fingerprints(ds.test) == _fingerprints(default.test)
    again = load_dataset(name, seed=3, val_size=12)
    assert [_fingerprints(s) for s in (again.train, again.val)] == [_fingerprints(s) for s in (ds.train, ds.val)]


@pytest.mark.parametrize(
    "val_size, needle",
    [
        (0, "--val-size must be a positive integer"),
        (-3, "--val-size must be a positive integer"),
        (60, "--val-size 60 leaves no training images"),
        (61, "use a --val-size below 60"),
    ],
)
def test_bad_val_size_is_one_line(idx_dir, val_size, needle):
    with pytest.raises(VaekitError, match=needle) as excinfo:
        load_dataset("fashion-mnist", data_dir=str(idx_dir[0]), download=False, val_size=val_size)
    assert "\n" not in str(excinfo.value)


def test_random_split_val_size_too_large_is_one_line(tmp_path):
    with pytest.raises(VaekitError, match=r"--val-size 45 leaves no training images: .* has 45 images") as excinfo:
        load_dataset(_npz(tmp_path), val_size=45)  # 50 images, 5 of them the test split
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    "value, needle",
    [
        ("0", "--val-size must be a positive integer, got 0"),
        ("1000", "--val-size 1000 leaves no training images"),
        ("x", "invalid int value"),
    ],
)
def test_train_refuses_a_bad_val_size_with_one_line(tmp_path, capsys, value, needle):
    out = tmp_path / "run"
    argv = [
        "train",
        "--dataset",
        _npz(tmp_path),
        "--latent-size",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--val-size",
        value,
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_config_records_val_size_and_old_configs_load_with_the_default(tmp_path):
    config = RunConfig()
    config.data.val_size = 10_000
    config.save(tmp_path / "new.json")
    assert RunConfig.load(tmp_path / "new.json").data.val_size == 10_000
    old = config.to_dict()
    del old["data"]["val_size"]  # a config.json written before the field existed
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert RunConfig.load(tmp_path / "old.json").data.val_size is None
    old["data"]["val_size"] = "10000"
    (tmp_path / "bad.json").write_text(json.dumps(old))
    with pytest.raises(VaekitError, match=r"data.val_size: expected int or null"):
        RunConfig.load(tmp_path / "bad.json")


def test_train_cli_passes_val_size_into_the_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                _npz(tmp_path, 80),
                "--latent-size",
                "2",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--val-size",
                "20",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["data"]["val_size"] == 20


def _quality_module():
    path = Path(__file__).parents[1] / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("quality_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_passes_val_size_to_the_config(capsys):
    quality = _quality_module()
    combo = quality.combinations()[0]
    assert quality.run_config(combo, quality.parse_args(["--val-size", "10000"])).data.val_size == 10_000
    assert quality.run_config(combo, quality.parse_args([])).data.val_size is None
    with pytest.raises(SystemExit):
        quality.parse_args(["--val-size", "60000"])
    assert "--val-size must be between 1 and 59999" in capsys.readouterr().err
