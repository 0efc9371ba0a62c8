"""Tests for vaekit.data: IDX reader, dataset sources, folder/npz/digits loaders."""

from __future__ import annotations

import gzip
import io
import os
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from vaekit.data import DATASET_NAMES, DatasetSplits, ImageSet, load_dataset, read_idx, sources
from vaekit.errors import VaekitError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def assert_one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    # No user data dir / cache leaks into the tests.
    monkeypatch.delenv("VAEKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make_fake_idx_set(
    root: Path, n_train: int = 5100, n_test: int = 50, gz: bool = True, seed: int = 1
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        write_idx(root / (stem + (".gz" if gz else "")), arr, gz=gz)
    return arrays


# --------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (2, 3, 4, 5)])
def test_idx_round_trip(tmp_path, gz, shape):
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    # gzip is detected by content, not by extension
    path = write_idx(tmp_path / "data.idx", arr, gz=gz)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable
    assert torch.from_numpy(out).shape == shape


def _write_raw(tmp_path: Path, data: bytes, name: str = "train-images-idx3-ubyte") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_idx_truncated(tmp_path):
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    p = _write_raw(tmp_path, gzip.compress(data[:1000]), "train-images-idx3-ubyte.gz")
    with pytest.raises(VaekitError, match=r"truncated IDX file \(expected 7856 bytes, found 1000\)") as ei:
        read_idx(p)
    msg = assert_one_line_error(ei)
    assert "train-images-idx3-ubyte.gz" in msg and "--data-dir" in msg


def test_idx_truncated_header(tmp_path):
    p = _write_raw(tmp_path, b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(VaekitError, match="truncated IDX file") as ei:
        read_idx(p)
    assert_one_line_error(ei)


def test_idx_trailing_bytes(tmp_path):
    p = _write_raw(tmp_path, idx_bytes(np.zeros((4, 3), np.uint8)) + b"xyz")
    with pytest.raises(VaekitError, match="3 trailing bytes") as ei:
        read_idx(p)
    assert str(p) in assert_one_line_error(ei)


def test_idx_wrong_magic(tmp_path):
    p = _write_raw(tmp_path, b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"ab")
    with pytest.raises(VaekitError, match="not an IDX file") as ei:
        read_idx(p)
    assert_one_line_error(ei)


def test_idx_wrong_type_code(tmp_path):
    p = _write_raw(tmp_path, idx_bytes(np.zeros((2, 2), np.uint8), type_code=0x0D))
    with pytest.raises(VaekitError, match="unsupported IDX type code 0x0d") as ei:
        read_idx(p)
    assert_one_line_error(ei)


@pytest.mark.parametrize("ndim", [0, 5])
def test_idx_bad_dim_count(tmp_path, ndim):
    p = _write_raw(tmp_path, bytes([0, 0, 8, ndim]) + struct.pack(f">{ndim}I", *([1] * ndim)) + b"\0")
    with pytest.raises(VaekitError, match=f"has {ndim} dimensions") as ei:
        read_idx(p)
    assert_one_line_error(ei)


def test_idx_empty_file(tmp_path):
    p = _write_raw(tmp_path, b"")
    with pytest.raises(VaekitError, match="empty file") as ei:
        read_idx(p)
    assert_one_line_error(ei)


def test_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(20, 10)))
    bad = good[:10] + bytes(b ^ 0xFF for b in good[10:30]) + good[30:]
    p = _write_raw(tmp_path, bad, "x.gz")
    with pytest.raises(VaekitError, match="corrupt gzip stream") as ei:
        read_idx(p)
    assert str(p) in assert_one_line_error(ei)


def test_idx_missing_file(tmp_path):
    with pytest.raises(VaekitError, match="file not found") as ei:
        read_idx(tmp_path / "nope.gz")
    assert_one_line_error(ei)


# --------------------------------------------------------------------------- IDX datasets


@pytest.mark.parametrize("gz", [True, False])
def test_load_fake_fashion_mnist(tmp_path, gz):
    arrays = make_fake_idx_set(tmp_path / "d", gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path / "d"), download=False)
    assert isinstance(ds, DatasetSplits) and ds.name == "fashion-mnist"
    assert (len(ds.train), len(ds.val), len(ds.test)) == (100, 5000, 50)
    assert (ds.image_size, ds.padded_size, ds.channels) == (28, 32, 1)
    assert ds.class_names[0] == "T-shirt/top" and len(ds.class_names) == 10
    assert len(ds.checksum) == 64 and ds.source == str(tmp_path / "d")
    tr = arrays["train-images-idx3-ubyte"]
    for split, imgs, labs in (
        (ds.train, tr[:100], arrays["train-labels-idx1-ubyte"][:100]),
        (ds.val, tr[100:], arrays["train-labels-idx1-ubyte"][100:]),
        (ds.test, arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]),
    ):
        x = split.images
        assert x.dtype == torch.uint8 and x.is_contiguous() and x.shape == (len(imgs), 1, 32, 32)
        assert split.labels.dtype == torch.int64
        np.testing.assert_array_equal(split.labels.numpy(), labs)
        np.testing.assert_array_equal(x[:, 0, 2:30, 2:30].numpy(), imgs)
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert int(x[:, 0][:, border].max()) == 0
    # the same data, compressed or not, gives the same checksum
    other = tmp_path / "other"
    make_fake_idx_set(other, gz=not gz)
    assert load_dataset("fashion-mnist", data_dir=str(other), download=False).checksum == ds.checksum


def test_dataset_subfolder_and_env(tmp_path, monkeypatch):
    make_fake_idx_set(tmp_path / "env" / "mnist", seed=3)
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "env"))
    ds = load_dataset("mnist", download=False)
    assert ds.source == str(tmp_path / "env" / "mnist")
    assert ds.class_names == [str(i) for i in range(10)]
    assert len(ds.val) == 5000


def test_missing_data_dir(tmp_path):
    with pytest.raises(VaekitError, match="does not exist") as ei:
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "missing"))
    assert "--data-dir" in assert_one_line_error(ei)


def test_label_count_mismatch(tmp_path):
    make_fake_idx_set(tmp_path / "d")
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte.gz", np.zeros(49, np.uint8))
    with pytest.raises(VaekitError, match="49 labels for 50 images") as ei:
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "d"), download=False)
    assert_one_line_error(ei)


def test_download_failure_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    monkeypatch.setitem(sources.IDX_DATASETS["fashion-mnist"], "system", [str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaekitError, match="download failed \\(no network\\)") as ei:
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "empty"))
    msg = assert_one_line_error(ei)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_download_into_cache_and_checksum(tmp_path, monkeypatch):
    import hashlib

    payloads = {}
    for stem, arr in make_fake_idx_set(tmp_path / "src").items():
        payloads[stem + ".gz"] = (tmp_path / "src" / (stem + ".gz")).read_bytes()
    md5 = {k: hashlib.md5(v).hexdigest() for k, v in payloads.items()}

    def fake_urlopen(url, timeout=None):
        return io.BytesIO(payloads[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(sources.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setitem(sources.IDX_DATASETS["mnist"], "system", [str(tmp_path / "nowhere")])
    monkeypatch.setitem(sources.IDX_DATASETS["mnist"], "md5", md5)
    ds = load_dataset("mnist")
    assert ds.source == str(tmp_path / "cache" / "vaekit" / "mnist") and len(ds.val) == 5000

    bad = dict(md5, **{"t10k-images-idx3-ubyte.gz": "0" * 32})
    monkeypatch.setitem(sources.IDX_DATASETS["mnist"], "md5", bad)
    os.remove(tmp_path / "cache" / "vaekit" / "mnist" / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(VaekitError, match="checksum mismatch") as ei:
        load_dataset("mnist")
    assert_one_line_error(ei)
    assert not (tmp_path / "cache" / "vaekit" / "mnist" / "t10k-images-idx3-ubyte.gz").exists()


def test_unknown_dataset():
    with pytest.raises(VaekitError, match="unknown dataset 'cats'") as ei:
        load_dataset("cats")
    msg = assert_one_line_error(ei)
    assert all(n in msg for n in DATASET_NAMES)


@pytest.mark.skipif(
    not (REAL_FMNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist", download=False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55000, 5000, 10000)
    assert ds.train.images.shape == (55000, 1, 32, 32)
    for split in (ds.train, ds.val, ds.test):
        assert int(split.labels.min()) == 0 and int(split.labels.max()) == 9
        assert int(split.images[:, :, :2].max()) == 0 and int(split.images[:, :, :, 30:].max()) == 0


# --------------------------------------------------------------------------- folder / npz / digits


def test_folder_dataset(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60), dtype=np.uint8), "L").save(root / "cats" / "a.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), "RGB").save(root / "cats" / "b.jpg")
    Image.fromarray(np.full((50, 30, 3), 200, np.uint8), "RGB").save(root / "dogs" / "c.png")
    Image.fromarray(np.full((32, 32), 7, np.uint8), "L").save(root / "dogs" / "d.jpeg")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "notes.txt").write_text("ignored")

    ds = load_dataset(f"folder:{root}", seed=0)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "skipped 1 unreadable" in warnings[0] and "broken.png" in warnings[0]
    assert ds.channels == 3 and ds.image_size == 32 and ds.padded_size == 32
    assert ds.class_names == ["cats", "dogs"]
    total = len(ds.train) + len(ds.val) + len(ds.test)
    assert total == 4 and min(len(ds.train), len(ds.val), len(ds.test)) >= 1
    all_images = torch.cat([ds.train.images, ds.val.images, ds.test.images])
    assert all_images.shape == (4, 3, 32, 32)
    labels = torch.cat([ds.train.labels, ds.val.labels, ds.test.labels])
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    # the uniform 200-grey RGB image of class 1 survives resize + crop unchanged
    assert any(bool((img == 200).all()) for img in all_images)
    # deterministic for a seed
    again = load_dataset(f"folder:{root}", seed=0)
    assert torch.equal(again.train.images, ds.train.images)

    grey = load_dataset(f"folder:{root}", channels=1, image_size=28)
    assert grey.train.images.shape[1:] == (1, 32, 32) and grey.image_size == 28
    assert int(grey.train.images[:, :, :2].max()) == 0


def test_folder_greyscale_default_channels(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((16, 16), i * 50, np.uint8), "L").save(tmp_path / f"{i}.png")
    ds = load_dataset(f"folder:{tmp_path}", image_size=64)
    assert ds.channels == 1 and ds.train.labels is None
    assert ds.train.images.shape[1:] == (1, 64, 64) and ds.class_names is None


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaekitError, match="no PNG/JPEG images found") as ei:
        load_dataset(f"folder:{tmp_path / 'empty'}")
    assert_one_line_error(ei)
    with pytest.raises(VaekitError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(VaekitError, match="could be read"):
        load_dataset(f"folder:{tmp_path / 'bad'}")


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "float"])
def test_npz_round_trip(tmp_path, layout):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 4, 20)
    if layout == "NHW":
        base = base[:, :1]
        arr = base[:, 0]
    elif layout == "NHWC":
        arr = base.transpose(0, 2, 3, 1)
    elif layout == "NCHW":
        arr = base
    else:
        arr = base.astype(np.float32) / 255.0
    np.savez(tmp_path / "d.npz", images=arr, labels=labels)
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}", seed=5)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 2, 2)
    assert ds.channels == base.shape[1] and ds.image_size == 32
    got = torch.cat([ds.train.images, ds.val.images, ds.test.images]).numpy()
    got_labels = torch.cat([ds.train.labels, ds.val.labels, ds.test.labels]).numpy()
    order = np.lexsort(got.reshape(20, -1).T)
    ref_order = np.lexsort(base.reshape(20, -1).T)
    np.testing.assert_array_equal(got[order], base[ref_order])
    np.testing.assert_array_equal(got_labels[order], labels[ref_order])


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((5, 10, 12), np.uint8))
    with pytest.raises(VaekitError, match=r"shape \(5, 10, 12\)") as ei:
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    assert_one_line_error(ei)
    np.savez(tmp_path / "i32.npz", x=np.zeros((5, 8, 8), np.int32))
    with pytest.raises(VaekitError, match="dtype int32"):
        load_dataset(f"npz:{tmp_path / 'i32.npz'}", image_size=32)
    np.savez(tmp_path / "f.npz", images=np.full((5, 32, 32), 2.0, np.float32))
    with pytest.raises(VaekitError, match=r"\[0, 1\]"):
        load_dataset(f"npz:{tmp_path / 'f.npz'}")
    np.savez(tmp_path / "two.npz", images=np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(VaekitError, match="at least 3"):
        load_dataset(f"npz:{tmp_path / 'two.npz'}")
    np.savez(tmp_path / "ok.npz", images=np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(VaekitError, match="28, 32, 64"):
        load_dataset(f"npz:{tmp_path / 'ok.npz'}", image_size=48)
    with pytest.raises(VaekitError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def test_digits():
    pytest.importorskip("sklearn")
    ds = load_dataset("digits")
    n = len(ds.train) + len(ds.val) + len(ds.test)
    assert n == 1797 and len(ds.val) == len(ds.test) == 179
    assert ds.train.images.shape == (len(ds.train), 1, 32, 32) and ds.train.images.dtype == torch.uint8
    assert int(ds.train.images.max()) > 200 and int(ds.train.labels.max()) == 9
    assert ds.class_names == [str(i) for i in range(10)]
    assert load_dataset("digits", seed=0).checksum == ds.checksum


def test_imageset_len_and_validation():
    s = ImageSet(torch.zeros(3, 1, 32, 32, dtype=torch.uint8), torch.tensor([1, 2, 3]))
    assert len(s) == 3 and s.labels.dtype == torch.int64
    with pytest.raises(ValueError):
        ImageSet(torch.zeros(3, 32, 32, dtype=torch.uint8), None)
