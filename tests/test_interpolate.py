"""Linear and spherical paths between latent codes, and the strips a run gets."""

import torch
from PIL import Image

from conftest import make_tiny_splits, tiny_config
from vaekit.report.interpolate import _pick_pairs, interpolate_run, lerp, slerp
from vaekit.training.loop import train


def test_lerp_and_slerp_start_and_end_at_the_codes():
    a, b = torch.tensor([3.0, 0.0, 1.0]), torch.tensor([-1.0, 2.0, 0.5])
    for path in (lerp, slerp):
        points = path(a, b, 7)
        assert points.shape == (7, 3)
        torch.testing.assert_close(points[0], a)
        torch.testing.assert_close(points[-1], b)


def test_slerp_keeps_to_the_arc_and_interpolates_the_norm():
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])
    points = slerp(a, b, 5)
    torch.testing.assert_close(points.norm(dim=1), torch.linspace(2.0, 4.0, 5))
    angles = torch.atan2(points[:, 1], points[:, 0])
    torch.testing.assert_close(angles, torch.linspace(0, torch.pi / 2, 5))
    assert lerp(a, b, 5)[2].norm() < points[2].norm()  # the line cuts inside


def test_slerp_of_parallel_codes_falls_back_to_the_line():
    a = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(slerp(a, 3 * a, 4), lerp(a, 3 * a, 4))


def test_pairs_join_different_classes_reproducibly():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    pairs = _pick_pairs(labels, 8, 3, seed=0)
    assert pairs == _pick_pairs(labels, 8, 3, seed=0) and len(pairs) == 3
    assert all(labels[i] != labels[j] for i, j in pairs)
    assert len({k for p in pairs for k in p}) == 6


def test_interpolate_run_writes_a_linear_and_a_spherical_row_per_pair(tmp_path):
    data = make_tiny_splits(240)
    run = train(tiny_config(), out=tmp_path / "run", data=data, progress=False)
    out = interpolate_run(run, tmp_path / "strip.png", pairs=2, steps=6, data=data)
    w, h = Image.open(out).size
    assert h == 4 * 28 + 5 * 2  # four rows of 28-pixel cells with 2-pixel gaps
    assert w > 6 * 28
    assert interpolate_run(run, data=data) == run / "interpolations.png"
