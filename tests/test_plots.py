"""Tests of vaekit.report.image_grids and vaekit.report.plots: grid geometry, PCA, and that every plot writes a PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit.atomic import atomic_write
from vaekit.report import image_grids, plots


def _png_ok(path) -> Image.Image:
    """Open ``path`` as PNG, check it has a size and more than one colour."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        assert im.width > 0 and im.height > 0
        lo_hi = im.convert("L").getextrema()
        assert lo_hi[0] != lo_hi[1], "picture is a single colour"
        return im.copy()


def _no_temp_files(folder) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def _cell(grid: np.ndarray, r: int, c: int, h: int, w: int, pad: int = 2) -> np.ndarray:
    y, x = pad + r * (h + pad), pad + c * (w + pad)
    return grid[y : y + h, x : x + w]


# ----------------------------------------------------------------------------- grids


def test_grid_shape_and_pixel_placement_grey():
    n, h, w = 5, 4, 3
    imgs = torch.stack([torch.full((1, h, w), i * 40 / 255) for i in range(n)])
    imgs[0, 0, 0, 0] = 1.0  # marks the top-left corner of image 0 (orientation check)
    grid = image_grids.image_grid(imgs, nrow=3, padding=2)
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * h + 3 * 2, 3 * w + 4 * 2)  # 2 rows x 3 columns, grey -> 2-D
    for i in range(n):
        r, c = divmod(i, 3)
        cell = _cell(grid, r, c, h, w)
        expected = np.full((h, w), i * 40, dtype=np.uint8)
        if i == 0:
            expected[0, 0] = 255
        np.testing.assert_array_equal(cell, expected)
    # separators and the unused sixth cell are the (white) padding value
    assert (grid[:2] == 255).all() and (grid[:, :2] == 255).all()
    assert (_cell(grid, 1, 2, h, w) == 255).all()


def test_grid_default_is_roughly_square():
    grid = image_grids.image_grid(torch.zeros(10, 1, 8, 8), padding=0)
    assert grid.shape == (3 * 8, 4 * 8)  # ceil(sqrt(10)) = 4 per row, 3 rows
    grid = image_grids.image_grid(torch.zeros(16, 1, 8, 8), padding=1)
    assert grid.shape == (4 * 8 + 5, 4 * 8 + 5)


def test_grid_rgb_channels_and_clamping():
    imgs = torch.zeros(2, 3, 4, 4)
    imgs[0, 0] = 1.0  # red
    imgs[1, 2] = 2.0  # blue, out of range -> clamped to 1
    imgs[1, 0] = -1.0  # clamped to 0
    grid = image_grids.image_grid(imgs, nrow=2)
    assert grid.shape == (4 + 4, 2 * 4 + 6, 3)
    np.testing.assert_array_equal(_cell(grid, 0, 0, 4, 4), np.broadcast_to([255, 0, 0], (4, 4, 3)))
    np.testing.assert_array_equal(_cell(grid, 0, 1, 4, 4), np.broadcast_to([0, 0, 255], (4, 4, 3)))


def test_grid_rejects_bad_channel_count():
    with pytest.raises(ValueError, match="C in"):
        image_grids.image_grid(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError):
        image_grids.image_grid(torch.zeros(0, 1, 4, 4))


def test_save_image_grid_roundtrip(tmp_path):
    imgs = torch.rand(6, 1, 5, 7)
    out = image_grids.save_image_grid(imgs, tmp_path / "deep" / "er" / "samples.png", nrow=3)
    assert out == tmp_path / "deep" / "er" / "samples.png"
    with Image.open(out) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), image_grids.image_grid(imgs, nrow=3))
    rgb = image_grids.save_image_grid(torch.rand(4, 3, 6, 6), tmp_path / "rgb.png")
    with Image.open(rgb) as im:
        assert im.mode == "RGB" and im.size == (2 * 6 + 6, 2 * 6 + 6)
    _no_temp_files(tmp_path)


def test_reconstructions_each_original_above_its_reconstruction(tmp_path):
    h = w = 3
    n = 10  # 8 per row: rows = orig 0-7, recon 0-7, orig 8-9 + blanks, recon 8-9 + blanks
    orig = torch.stack([torch.full((1, h, w), i * 10 / 255) for i in range(n)])
    recon = torch.stack([torch.full((1, h, w), (120 + i * 10) / 255) for i in range(n)])
    path = image_grids.save_reconstructions(orig, recon, tmp_path / "reconstructions.png")
    grid = np.asarray(Image.open(path))
    assert grid.shape == (4 * h + 5 * 2, 8 * w + 9 * 2)
    for i in range(n):
        chunk, col = divmod(i, 8)
        assert (_cell(grid, 2 * chunk, col, h, w) == i * 10).all()
        assert (_cell(grid, 2 * chunk + 1, col, h, w) == 120 + i * 10).all()
    for col in range(2, 8):  # padding cells of the short last chunk are blank
        assert (_cell(grid, 2, col, h, w) == 255).all()
        assert (_cell(grid, 3, col, h, w) == 255).all()


def test_reconstructions_few_images_two_rows_and_shape_check(tmp_path):
    path = image_grids.save_reconstructions(torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4) * 0.6, tmp_path / "r.png")
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 4 + 6, 3 * 4 + 8)
    assert (_cell(grid, 0, 2, 4, 4) == 0).all() and (_cell(grid, 1, 0, 4, 4) == 153).all()
    with pytest.raises(ValueError, match="same shape"):
        image_grids.save_reconstructions(torch.zeros(3, 1, 4, 4), torch.zeros(2, 1, 4, 4), tmp_path / "x.png")


def test_interpolation_rows_and_labels(tmp_path):
    lin = torch.linspace(0, 1, 5).view(5, 1, 1, 1).expand(5, 1, 6, 6)
    sph = torch.rand(4, 1, 6, 6)  # shorter strip: padded with a blank cell
    plain = image_grids.save_interpolation([lin, sph], tmp_path / "plain.png")
    grid = np.asarray(Image.open(plain))
    assert grid.shape == (2 * 6 + 6, 5 * 6 + 12)
    for t in range(5):
        assert (_cell(grid, 0, t, 6, 6) == round(t / 4 * 255)).all()
    assert (_cell(grid, 1, 4, 6, 6) == 255).all()
    labelled = image_grids.save_interpolation(
        [lin, sph], tmp_path / "interpolations.png", labels=["linear", "spherical"]
    )
    im = _png_ok(labelled)
    assert im.height == grid.shape[0] and im.width > grid.shape[1]  # room for the names
    with pytest.raises(ValueError):
        image_grids.save_interpolation([lin], tmp_path / "bad.png", labels=["a", "b"])


# ----------------------------------------------------------------------------- PCA


def test_pca_exact_small_example():
    x = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, -1.0], [0.0, 1.0]]) + 5.0
    points, ratios = plots.pca_2d(x)
    np.testing.assert_allclose(ratios, [0.8, 0.2])
    np.testing.assert_allclose(points[:, 0], [-2, 2, 0, 0], atol=1e-12)
    np.testing.assert_allclose(np.abs(points[:, 1]), [0, 0, 1, 1], atol=1e-12)


def test_pca_finds_known_dominant_direction():
    rng = np.random.default_rng(0)
    direction = np.array([3.0, 4.0, 0.0, 0.0, 0.0]) / 5.0
    t = rng.normal(scale=5.0, size=400)
    x = np.outer(t, direction) + rng.normal(scale=0.3, size=(400, 5)) + 10.0
    points, ratios = plots.pca_2d(x)
    assert points.shape == (400, 2) and ratios.shape == (2,)
    # reference: eigen-decomposition of the sample covariance
    evals, evecs = np.linalg.eigh(np.cov(x, rowvar=False))
    np.testing.assert_allclose(ratios, evals[::-1][:2] / evals.sum(), rtol=1e-8)
    assert ratios[0] > 0.95
    ref = (x - x.mean(0)) @ evecs[:, -1]
    np.testing.assert_allclose(np.abs(points[:, 0]), np.abs(ref), atol=1e-8)
    assert abs(np.corrcoef(points[:, 0], t)[0, 1]) > 0.99
    # deterministic sign: the largest loading ([0.6, 0.8] direction -> 2nd coordinate) is positive
    assert np.corrcoef(points[:, 0], t)[0, 1] > 0


def test_pca_degenerate_inputs():
    points, ratios = plots.pca_2d(np.arange(5.0)[:, None])
    np.testing.assert_allclose(ratios, [1.0, 0.0])
    np.testing.assert_allclose(points[:, 1], 0.0)
    _, ratios = plots.pca_2d(np.ones((3, 4)))
    np.testing.assert_allclose(ratios, [0.0, 0.0])


# ----------------------------------------------------------------------------- plots


def _metrics_rows(n: int) -> list[dict]:
    return [
        {
            "epoch": str(e),
            "train_elbo": f"{-150 + 10 * e}",
            "val_elbo": -152 + 9 * e,
            "train_recon": 120 - 8 * e,
            "val_recon": "",  # empty cells are skipped
            "train_kl": 30 - e,
            "val_kl": 31 - e,
            "seconds": 3.0,
        }
        for e in range(1, n + 1)
    ]


@pytest.mark.parametrize("epochs", [1, 3])
def test_loss_curves(tmp_path, epochs):
    out = plots.plot_loss_curves(_metrics_rows(epochs), tmp_path / "plots" / "loss_curves.png")
    im = _png_ok(out)
    assert im.width > 2 * im.height  # three panels side by side
    _no_temp_files(out.parent)


def test_loss_curves_tolerates_missing_columns(tmp_path):
    rows = [{"epoch": 1, "train_elbo": -100.0}, {"epoch": 2, "train_elbo": "n/a"}]
    _png_ok(plots.plot_loss_curves(rows, tmp_path / "l.png"))
    _png_ok(plots.plot_loss_curves([], tmp_path / "empty.png"))


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_latent_scatter(tmp_path, dim):
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(200, dim, generator=gen)
    labels = torch.randint(0, 3, (200,), generator=gen)
    out = plots.plot_latent_scatter(means, labels, tmp_path / f"s{dim}.png", ["zero", "one", "two"])
    _png_ok(out)


def test_latent_scatter_numpy_without_labels_and_length_check(tmp_path):
    _png_ok(plots.plot_latent_scatter(np.random.default_rng(1).normal(size=(50, 4)), None, tmp_path / "a.png"))
    with pytest.raises(ValueError, match="labels"):
        plots.plot_latent_scatter(np.zeros((5, 2)), [0, 1], tmp_path / "b.png")


def test_component_usage(tmp_path):
    _png_ok(plots.plot_component_usage([0.4, 0.3, 0.2, 0.1, 0.0], tmp_path / "cu.png"))
    _png_ok(plots.plot_component_usage(torch.tensor([0.5, 0.5]), tmp_path / "cu2.png"))
    with pytest.raises(ValueError):
        plots.plot_component_usage([0.5, -0.1], tmp_path / "bad.png")


def test_plot_overwrites_atomically_and_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def boom(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    _no_temp_files(tmp_path)
    image_grids.save_image_grid(torch.rand(4, 1, 4, 4), target)
    _png_ok(target)


def test_figures_are_released(tmp_path):
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    for i in range(3):
        plots.plot_loss_curves(_metrics_rows(2), tmp_path / f"l{i}.png")
        plots.plot_component_usage([0.5, 0.5], tmp_path / f"c{i}.png")
    assert set(plt.get_fignums()) == before


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, vaekit.report.image_grids, vaekit.report.plots, vaekit.report.page, vaekit.report.facts; "
        "heavy = [m for m in ('matplotlib', 'PIL') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
