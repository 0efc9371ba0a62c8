"""`vaekit compare`: paired per-image NLL differences between evaluated runs, and its refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vaekit
from conftest import blob_images
from vaekit.cli.main import main
from vaekit.evaluation.compare import paired_difference
from vaekit.evaluation.per_image import PER_IMAGE_FILE, PerImage, arrays_sha256, indices_sha256, per_image_bytes

SETTINGS = {
    "dataset": "blobs",
    "dataset_checksum": "c0ffee" * 8,
    "binarized": True,
    "binarize_seed": 20190101,
    "likelihood": "bernoulli",
    "nll_samples": 100,
    "checkpoint": "best",
    "sampling_seed": 0,
}


def fake_run(root: Path, name: str, nll: np.ndarray | None, index: np.ndarray | None = None, **settings) -> Path:
    """A run directory holding only what compare reads: evaluation.json and the per-image file."""
    run = root / name
    run.mkdir()
    n = len(nll) if nll is not None else 10
    index = np.arange(n) if index is None else index
    values = PerImage(
        index=index.astype(np.int64), elbo=-(nll if nll is not None else np.full(n, 100.0)) - 3.0, nll=nll
    )
    (run / PER_IMAGE_FILE).write_bytes(per_image_bytes(values))
    full = {
        **SETTINGS,
        "test_images": n,
        "test_selection": f"first {n} of 100",
        "test_indices_sha256": indices_sha256(index),
        **settings,
    }
    evaluation = {"settings": full, "per_image": {"file": PER_IMAGE_FILE, "arrays_sha256": arrays_sha256(values)}}
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    return run


@pytest.fixture
def nlls() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    base = 230 + 40 * rng.standard_normal(400)  # images differ a lot; the runs differ little on each
    return base, base + 0.5 + rng.standard_normal(400), base - 0.2 + 3 * rng.standard_normal(400)


def test_paired_standard_error_matches_numpy(nlls, tmp_path):
    a, b, c = nlls
    runs = [fake_run(tmp_path, name, v) for name, v in zip("abc", (a, b, c))]
    result = vaekit.compare_runs(runs)
    assert result["images"] == 400 and [r["run"] for r in result["runs"]] == [str(r) for r in runs]
    for row, values in zip(result["runs"], (a, b, c)):
        assert row["nll"]["mean"] == pytest.approx(np.mean(values))
        assert row["nll"]["stderr"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(400))
    assert result["runs"][0]["minus_first"] is None
    for row, values in zip(result["runs"][1:], (b, c)):  # each against the first run, not the one before
        d = values - a
        paired = row["minus_first"]
        assert paired["mean"] == pytest.approx(d.mean(), abs=1e-12)
        assert paired["stderr"] == pytest.approx(np.sqrt(np.sum((d - d.mean()) ** 2) / 399) / 20)
        assert paired["standard_errors"] == pytest.approx(d.mean() / paired["stderr"])
        assert paired["stderr"] < row["nll"]["stderr"] / 5  # pairing removes the images' shared spread
    assert result["runs"][1]["minus_first"]["standard_errors"] > 5


def test_paired_difference_of_identical_runs_has_no_standard_error_count():
    values = np.array([1.0, 2.0, 5.0])
    assert paired_difference(values, values) == {"mean": 0.0, "stderr": 0.0, "standard_errors": None, "images": 3}
    assert paired_difference(values, values + 1.5)["standard_errors"] is None
    with pytest.raises(ValueError, match="equally long"):
        paired_difference(values, values[:2])


def test_cli_prints_the_table_and_writes_json(nlls, tmp_path, capsys):
    a, b, _ = nlls
    run_a, run_b = fake_run(tmp_path, "a", a), fake_run(tmp_path, "b", b)
    out = tmp_path / "cmp.json"
    assert main(["compare", str(run_a), str(run_b), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    d = b - a
    assert (
        f"{d.mean():+.3f} ± {d.std(ddof=1) / 20:.3f}" in table and f"{a.mean():.2f} ± {a.std(ddof=1) / 20:.2f}" in table
    )
    assert "400 test images" in table and "S=100" in table
    saved = json.loads(out.read_text())
    assert saved["runs"][1]["minus_first"]["mean"] == pytest.approx(d.mean())
    assert saved["protocol"]["nll_samples"] == 100


def _refused(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vaekit: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "other, needles",
    [
        (
            dict(nll=np.full(12, 230.0)),
            [
                "different test images: 10 against 12 images",
                "(first 10 of 100 against first 12 of 100)",
                "--test-subset",
            ],
        ),
        (
            dict(nll=np.full(10, 230.0), index=np.arange(10) + 5),
            ["different test images: the same count, 10, but not the same images"],
        ),
        (
            dict(nll=np.full(10, 230.0), nll_samples=5000),
            ["different protocols: importance samples S 100 against 5000"],
        ),
        (
            dict(nll=np.full(10, 230.0), binarize_seed=1, nll_samples=10),
            ["binarisation seed 20190101 against 1, importance samples S 100 against 10"],
        ),
        (
            dict(nll=np.full(10, 230.0), dataset="other", dataset_checksum="ab" * 32),
            ["dataset blobs (checksum c0ffeec0ffee) against other (checksum abababababab)"],
        ),
        (
            dict(nll=np.full(10, 230.0), binarized=False, binarize_seed=None, likelihood="logistic"),
            ["binarised True against False", "likelihood bernoulli against logistic"],
        ),
        (dict(nll=None), ["evaluated without the NLL", "run `vaekit evaluate"]),
    ],
)
def test_refuses_runs_that_cannot_be_paired_naming_what_differs(tmp_path, capsys, other, needles):
    first = fake_run(tmp_path, "a", np.full(10, 229.0))
    second = fake_run(tmp_path, "b", **other)
    err = _refused(["compare", str(first), str(second)], capsys)
    assert all(n in err for n in needles), err


def test_refuses_runs_without_per_image_results_telling_the_user_to_evaluate(tmp_path, capsys):
    first = fake_run(tmp_path, "a", np.full(10, 229.0))
    missing = fake_run(tmp_path, "b", np.full(10, 229.0))
    (missing / PER_IMAGE_FILE).unlink()
    assert f"{missing} has no per-image evaluation ({PER_IMAGE_FILE}); run `vaekit evaluate {missing}`" in _refused(
        ["compare", str(first), str(missing)], capsys
    )
    old = tmp_path / "old"
    old.mkdir()
    (old / "evaluation.json").write_text(json.dumps({"settings": SETTINGS, "test": {}}))  # before per-image results
    assert f"has no per-image results (written by an older vaekit); run `vaekit evaluate {old}` again" in _refused(
        ["compare", str(first), str(old)], capsys
    )
    never = tmp_path / "never"
    never.mkdir()
    assert f"{never} has not been evaluated (no evaluation.json); run `vaekit evaluate {never}`" in _refused(
        ["compare", str(never), str(first)], capsys
    )
    assert "does not exist" in _refused(["compare", str(first), str(tmp_path / "nowhere")], capsys)
    assert "compare needs at least two runs, got 1" in _refused(["compare", str(first)], capsys)


def test_refuses_a_per_image_file_that_is_not_the_one_evaluation_json_names(tmp_path, capsys):
    first = fake_run(tmp_path, "a", np.full(10, 229.0))
    stale = fake_run(tmp_path, "b", np.full(10, 229.0))
    values = PerImage(index=np.arange(10), elbo=np.full(10, -240.0), nll=np.full(10, 228.0))
    (stale / PER_IMAGE_FILE).write_bytes(per_image_bytes(values))
    assert "does not belong to" in _refused(["compare", str(first), str(stale)], capsys)
    (stale / PER_IMAGE_FILE).write_bytes(b"not a zip")
    assert "is not a readable npz file" in _refused(["compare", str(first), str(stale)], capsys)


def test_a_pickled_array_is_refused_not_loaded(tmp_path, capsys):
    first = fake_run(tmp_path, "a", np.full(10, 229.0))
    other = fake_run(tmp_path, "b", np.full(10, 229.0))
    np.savez(
        other / PER_IMAGE_FILE, index=np.arange(10), elbo=np.full(10, -1.0), nll=np.array([object()] * 10, dtype=object)
    )
    assert "is not a readable npz file" in _refused(["compare", str(first), str(other)], capsys)


def test_no_traceback_reaches_the_terminal(tmp_path):
    run = fake_run(tmp_path, "a", np.full(10, 229.0))
    proc = subprocess.run(
        [sys.executable, "-m", "vaekit", "compare", str(run), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    images, labels = blob_images(160)
    data = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(data, images=images[:, 0], labels=labels)
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for name, latent in (("small", "2"), ("larger", "4")):
        out = root / name
        assert (
            main(
                [
                    "train",
                    "--dataset",
                    f"npz:{data}",
                    "--latent-size",
                    latent,
                    "--width",
                    "32",
                    "--epochs",
                    "1",
                    "--batch-size",
                    "16",
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        runs.append(out)
    return runs


def _evaluate(run: Path, *extra: str) -> None:
    assert (
        main(["evaluate", str(run), "--nll-samples", "8", "--batch-size", "6", "--no-quality", "--quiet", *extra]) == 0
    )


def test_compare_two_evaluated_runs_end_to_end(two_runs, tmp_path, capsys):
    for run in two_runs:
        _evaluate(run)
    out = tmp_path / "cmp.json"
    assert main(["compare", *map(str, two_runs), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert (
        all(str(r) in table for r in two_runs) and "16 test images of npz:" in table and "(all 16; binarised" in table
    )
    result = json.loads(out.read_text())
    nll = [np.load(r / PER_IMAGE_FILE, allow_pickle=False)["nll"] for r in two_runs]
    evaluations = [json.loads((r / "evaluation.json").read_text()) for r in two_runs]
    for row, evaluation in zip(result["runs"], evaluations):
        assert row["nll"]["mean"] == pytest.approx(evaluation["test"]["nll"]["mean"])
    d = nll[1] - nll[0]
    assert result["runs"][1]["minus_first"]["mean"] == pytest.approx(d.mean())
    assert result["runs"][1]["minus_first"]["stderr"] == pytest.approx(d.std(ddof=1) / 4)
    _evaluate(two_runs[1], "--test-subset", "10")  # no longer the same images
    err = _refused(["compare", *map(str, two_runs)], capsys)
    assert "different test images: 16 against 10 images (all 16 against first 10 of 16)" in err
