"""Bad input through the real command line: one line on stderr naming the problem and what to
do, exit code 2, no traceback, and no run directory left behind.

Table-driven and in-process (`vaekit.cli.main.main`), with two cases repeated in a subprocess to
prove that nothing reaches the terminal but that line.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import blob_images
from vaekit.cli.main import main

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(array: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 8, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def _idx_dir(root: Path, broken: bytes) -> Path:
    """A --data-dir with the four Fashion-MNIST names whose training-image file is `broken`."""
    d = root / "idx"
    d.mkdir()
    files = [broken, _idx(np.zeros(10)), _idx(np.zeros((10, 28, 28))), _idx(np.zeros(10))]
    for name, data in zip(IDX_NAMES, files):
        (d / name).write_bytes(data)
    return d


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    images, labels = blob_images(200)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, images=images[:, 0], labels=labels)
    return path


@pytest.fixture(scope="module")
def finished_run(npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                f"npz:{npz}",
                "--latent-size",
                "4",
                "--batch-size",
                "32",
                "--epochs",
                "1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def _run_copy(finished_run: Path, tmp: Path, edit_config=None) -> Path:
    run = tmp / "copied-run"
    shutil.copytree(finished_run, run)
    if edit_config:
        config = json.loads((run / "config.json").read_text())
        edit_config(config)
        (run / "config.json").write_text(json.dumps(config))
    return run


def _run_without_checkpoint(finished_run: Path, tmp: Path) -> Path:
    run = tmp / "no-ckpt"
    run.mkdir()
    shutil.copy(finished_run / "config.json", run / "config.json")
    return run


def _images(tmp: Path, specs) -> Path:
    d = tmp / "images"
    d.mkdir()
    for i, (mode, size) in enumerate(specs):
        color = (i * 37 % 256,) * len(mode) if len(mode) > 1 else i * 37 % 256
        Image.new(mode, size, color).save(d / f"{i:03d}.png")
    return d


def _file(tmp: Path) -> Path:
    f = tmp / "a-file"
    f.write_text("not a folder")
    return f


def _read_only(monkeypatch, path: Path) -> None:
    """Tests run as root, for whom chmod changes nothing: deny write access the way os.access would."""
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, *a, **k: False if Path(p) == path and mode & os.W_OK else real(p, mode, *a, **k)
    )


def _unreadable(monkeypatch, path: Path) -> None:
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == path else real(p, mode, *a, **k))


TRAIN = ["train", "--latent-size", "4", "--batch-size", "32", "--epochs", "1", "--quiet"]

# (id, argv builder (tmp, npz, finished_run, monkeypatch) -> argv, words the one line must contain)
CASES = [
    (
        "idx-truncated",
        lambda t, n, r, m: TRAIN + ["--data-dir", str(_idx_dir(t, _idx(np.zeros((10, 28, 28)))[:500]))],
        ["truncated IDX file", "re-download"],
    ),
    ("idx-empty", lambda t, n, r, m: TRAIN + ["--data-dir", str(_idx_dir(t, b""))], ["empty file", "re-download"]),
    (
        "idx-wrong-magic",
        lambda t, n, r, m: TRAIN + ["--data-dir", str(_idx_dir(t, b"\x12\x34" + _idx(np.zeros((10, 28, 28)))[2:]))],
        ["bad magic number", "re-download"],
    ),
    (
        "idx-wrong-dimension",
        lambda t, n, r, m: TRAIN + ["--data-dir", str(_idx_dir(t, _idx(np.zeros((10, 32, 32)))))],
        ["expected 28x28 images", "check that it is"],
    ),
    (
        "idx-corrupt-gzip",
        lambda t, n, r, m: TRAIN + ["--data-dir", str(_idx_dir(t, gzip.compress(_idx(np.zeros((10, 28, 28))))[:40]))],
        ["corrupt gzip", "re-download"],
    ),
    (
        "data-dir-missing",
        lambda t, n, r, m: TRAIN + ["--data-dir", str(t / "nowhere")],
        ["does not exist", "--data-dir"],
    ),
    (
        "data-dir-is-a-file",
        lambda t, n, r, m: TRAIN + ["--data-dir", str(_file(t))],
        ["not a readable folder", "--data-dir"],
    ),
    (
        "data-dir-unreadable",
        lambda t, n, r, m: (d := t / "locked", d.mkdir(), _unreadable(m, d), TRAIN + ["--data-dir", str(d)])[-1],
        ["not a readable folder", "--data-dir"],
    ),
    (
        "image-folder-empty",
        lambda t, n, r, m: (d := t / "empty", d.mkdir(), TRAIN + ["--dataset", f"folder:{d}"])[-1],
        ["no PNG/JPEG images found", "put images in it"],
    ),
    (
        "image-folder-of-text",
        lambda t, n, r, m: (
            d := t / "txt",
            d.mkdir(),
            (d / "a.txt").write_text("x"),
            TRAIN + ["--dataset", f"folder:{d}"],
        )[-1],
        ["no PNG/JPEG images found", "put images in it"],
    ),
    (
        "image-folder-of-fake-pngs",
        lambda t, n, r, m: (
            d := t / "fake",
            d.mkdir(),
            [(d / f"{i}.png").write_bytes(b"not a png") for i in range(3)],
            TRAIN + ["--dataset", f"folder:{d}"],
        )[-1],
        ["none of the 3 image files", "valid PNG/JPEG"],
    ),
    (
        "image-folder-missing",
        lambda t, n, r, m: TRAIN + ["--dataset", f"folder:{t / 'nowhere'}"],
        ["does not exist", "folder:PATH"],
    ),
    (
        "npz-missing",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{t / 'nowhere.npz'}"],
        ["does not exist", "npz:PATH"],
    ),
    (
        "npz-not-an-npz",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{_file(t)}"],
        ["cannot read npz file", "numpy.savez"],
    ),
    (
        "out-is-a-file",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--out", str(_file(t))],
        ["is a file", "folder path"],
    ),
    (
        "out-under-a-file",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--out", str(_file(t) / "run")],
        ["is a file, not a folder", "another --out"],
    ),
    (
        "out-read-only",
        lambda t, n, r, m: (
            d := t / "ro",
            d.mkdir(),
            _read_only(m, d),
            TRAIN + ["--dataset", f"npz:{n}", "--out", str(d / "run")],
        )[-1],
        ["not writable", "choose another folder"],
    ),
    (
        "out-holds-a-run",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--out", str(_run_copy(r, t))],
        ["already holds a run", "--resume"],
    ),
    (
        "sample-without-checkpoint",
        lambda t, n, r, m: ["sample", str(_run_without_checkpoint(r, t))],
        ["has no checkpoint yet", "train it"],
    ),
    (
        "reconstruct-without-checkpoint",
        lambda t, n, r, m: ["reconstruct", str(_run_without_checkpoint(r, t))],
        ["has no checkpoint yet", "train it"],
    ),
    (
        "resume-without-checkpoint",
        lambda t, n, r, m: ["train", "--resume", str(_run_without_checkpoint(r, t)), "--quiet"],
        ["no checkpoint to resume from", "start it again"],
    ),
    (
        "resume-not-a-run",
        lambda t, n, r, m: ["train", "--resume", str(t), "--quiet"],
        ["not a vaekit run directory", "pass the folder"],
    ),
    (
        "resume-changing-settings",
        lambda t, n, r, m: ["train", "--resume", str(_run_copy(r, t)), "--levels", "2", "--lr", "0.01", "--quiet"],
        ["--levels, --lr cannot change", "only --epochs, --max-minutes and --precision may"],
    ),
    (
        "group-channels-without-levels",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--group-channels", "4"],
        ["--group-channels sets the lower groups of a hierarchy", "add --levels 2"],
    ),
    (
        "temperature-on-one-level",
        lambda t, n, r, m: ["sample", str(r), "--temperature", "0.5", "--out", str(t / "s.png")],
        ["--temperature scales the lower groups", "has one level"],
    ),
    ("sample-missing-run", lambda t, n, r, m: ["sample", str(t / "nowhere")], ["does not exist", "pass the folder"]),
    (
        "latent-size-0",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--latent-size", "0"],
        ["--latent-size must be a positive integer"],
    ),
    (
        "negative-lr",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--lr", "-0.001"],
        ["--lr must be a positive number"],
    ),
    ("nan-lr", lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--lr", "nan"], ["--lr must be a positive number"]),
    (
        "components-0",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--components", "0"],
        ["--components must be a positive integer"],
    ),
    (
        "epochs-0",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--epochs", "0"],
        ["--epochs must be a positive integer"],
    ),
    (
        "batch-larger-than-data",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--batch-size", "500"],
        ["larger than the 160 training images", "lower it"],
    ),
    (
        "negative-checkpoint-every",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--checkpoint-every", "-1"],
        ["--checkpoint-every must be >= 0"],
    ),
    (
        "free-bits-with-a-mixture",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--components", "2", "--free-bits", "0.5"],
        ["--free-bits is a per-dimension KL floor", "--kl-warmup or --beta"],
    ),
    (
        "free-bits-with-a-vamp-prior",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--prior", "vamp", "--free-bits", "0.5"],
        ["--free-bits is a per-dimension KL floor", "--kl-warmup or --beta"],
    ),
    (
        "free-bits-with-a-hierarchy",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--levels", "2", "--free-bits", "0.5"],
        ["--free-bits is a per-dimension KL floor of a single latent", "--kl-warmup"],
    ),
    (
        "levels-too-many",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--levels", "8"],
        ["--levels 8 is more than vaekit builds", "use 1 to 7"],
    ),
    (
        "grad-clip-0",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--grad-clip", "0"],
        ["--grad-clip must be positive"],
    ),
    (
        "max-minutes-0",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--max-minutes", "0"],
        ["--max-minutes (max_minutes) must be a positive number"],
    ),
    (
        "not-an-int",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--batch-size", "many"],
        ["invalid int value", "--help"],
    ),
    (
        "unknown-dataset",
        lambda t, n, r, m: TRAIN + ["--dataset", "imagenet"],
        ["unknown dataset 'imagenet'", "use one of"],
    ),
    (
        "unknown-likelihood",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--likelihood", "poisson"],
        ["unknown --likelihood 'poisson'", "choose one of"],
    ),
    (
        "unknown-lr-schedule",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--lr-schedule", "step"],
        ["unknown --lr-schedule 'step'", "choose one of"],
    ),
    ("unknown-flag", lambda t, n, r, m: TRAIN + ["--learning-rate", "0.1"], ["unrecognized arguments", "--help"]),
    (
        "config-unknown-key",
        lambda t, n, r, m: ["sample", str(_run_copy(r, t, lambda c: c["model"].update(hidden_dims=[32, 64])))],
        ["unknown key(s) hidden_dims", "remove them"],
    ),
    (
        "config-wrong-type",
        lambda t, n, r, m: ["sample", str(_run_copy(r, t, lambda c: c["model"].update(latent_size="four")))],
        ["model.latent_size: expected int", '"four"'],
    ),
    (
        "config-not-json",
        lambda t, n, r, m: (run := _run_copy(r, t), (run / "config.json").write_text("{oops"), ["sample", str(run)])[
            -1
        ],
        ["is not valid JSON", "restore it"],
    ),
    (
        "device-cuda-absent",
        lambda t, n, r, m: TRAIN + ["--dataset", f"npz:{n}", "--device", "cuda"],
        ["CUDA is not available", "--device cpu"],
    ),
    (
        "evaluate-device-cuda-absent",
        lambda t, n, r, m: ["evaluate", str(r), "--device", "cuda", "--no-quality"],
        ["CUDA is not available", "--device cpu"],
    ),
    (
        "sample-unknown-device",
        lambda t, n, r, m: ["sample", str(r), "--device", "tpu"],
        ["invalid choice: 'tpu'", "--help"],
    ),
]


@pytest.mark.parametrize("build, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    build, needles, npz, finished_run, tmp_path, monkeypatch, capsys
):
    if "cuda" in needles[0].lower() and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.chdir(tmp_path)  # a default runs/<timestamp> would land here
    argv = build(tmp_path, npz, finished_run, monkeypatch)
    out = tmp_path / "out"
    if argv[0] == "train" and "--out" not in argv and "--resume" not in argv:
        argv = argv + ["--out", str(out)]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    code = main(argv)

    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("vaekit: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_mixed_sizes_and_modes_load_with_a_warning_and_train(tmp_path, capsys):
    modes = ["L", "RGB", "RGBA", "P", "LA", "1"]
    sizes = [(28, 28), (40, 30), (20, 50), (64, 64), (33, 33)]
    folder = _images(tmp_path, [(modes[i % len(modes)], sizes[i % len(sizes)]) for i in range(40)])
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            f"folder:{folder}",
            "--image-size",
            "28",
            "--latent-size",
            "4",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("vaekit: warning:")]
    assert len(warnings) == 1 and "5 size(s) and 6 mode(s)" in warnings[0], err
    assert (out / "checkpoints" / "latest").is_file()


@pytest.mark.parametrize("case", ["idx-truncated", "config-unknown-key"])
def test_no_traceback_reaches_the_terminal(case, npz, finished_run, tmp_path, monkeypatch):
    build, needles = next(c[1:] for c in CASES if c[0] == case)
    argv = build(tmp_path, npz, finished_run, monkeypatch)
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-m", "vaekit", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(n in proc.stderr for n in needles) and proc.stdout == ""
    assert not (tmp_path / "out").exists()


# Paths the permission check lets through but the file system refuses, even to root: mkdir
# under /proc fails whatever os.access says, and a folder where a file must go cannot be replaced.
UNWRITABLE = "/proc/vaekit-test"


def _blocked(run: Path, name: str) -> Path:
    (run / name).mkdir()
    return run


# (id, argv builder (tmp, npz, finished_run) -> argv, the path the one line must name)
WRITE_CASES = [
    ("train-out", lambda t, n, r: TRAIN + ["--dataset", f"npz:{n}", "--out", f"{UNWRITABLE}/run"], UNWRITABLE),
    ("sample-out", lambda t, n, r: ["sample", str(r), "-n", "4", "--out", f"{UNWRITABLE}/s.png"], UNWRITABLE),
    ("reconstruct-out", lambda t, n, r: ["reconstruct", str(r), "-n", "4", "--out", f"{UNWRITABLE}/r.png"], UNWRITABLE),
    (
        "interpolate-out",
        lambda t, n, r: ["interpolate", str(r), "--pairs", "1", "--steps", "3", "--out", f"{UNWRITABLE}/i.png"],
        UNWRITABLE,
    ),
    (
        "evaluate-record",
        lambda t, n, r: [
            "evaluate",
            str(_blocked(_run_copy(r, t), "evaluation.json")),
            "--nll-samples",
            "2",
            "--test-subset",
            "4",
            "--no-quality",
            "--quiet",
        ],
        "evaluation.json",
    ),
    ("report-page", lambda t, n, r: ["report", str(_blocked(_run_copy(r, t), "report.html"))], "report.html"),
]


@pytest.mark.parametrize("build, path", [c[1:] for c in WRITE_CASES], ids=[c[0] for c in WRITE_CASES])
def test_a_path_that_cannot_be_written_is_one_line_exit_2(
    build, path, npz, finished_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    argv = build(tmp_path, npz, finished_run)
    if argv[0] == "report":  # the pictures a report draws first are not what is tested here
        monkeypatch.setattr("vaekit.report.pictures.ensure_pictures", lambda run_dir, data=None: None)

    code = main(argv)

    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("vaekit: error: cannot create or write ") and path in lines[0], lines[0]
    assert "(No such file or directory)" in lines[0] or "(Is a directory)" in lines[0], lines[0]
    assert not Path(UNWRITABLE).exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no half-written file


def test_a_disk_full_before_the_first_checkpoint_leaves_no_run(npz, tmp_path, monkeypatch, capsys):
    import errno

    import vaekit.training.loop

    def full(run_dir, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "metrics.csv"))

    monkeypatch.setattr(vaekit.training.loop, "write_metrics", full)
    out = tmp_path / "run"
    code = main(TRAIN + ["--dataset", f"npz:{npz}", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"cannot create or write {out / 'metrics.csv'} (No space left on device)" in err
    assert not out.exists()


def _ordinary_user() -> list[str]:
    """The command prefix that runs a process as an ordinary user (nobody when this is root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to drop to an ordinary user")
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.mark.parametrize("command", ["train", "sample"])
def test_a_read_only_folder_as_an_ordinary_user_is_one_line_exit_2(command, npz, finished_run):
    import tempfile

    prefix = _ordinary_user()
    shared = Path(tempfile.mkdtemp(prefix="vaekit-test-"))  # not under pytest's tmp, which only root can enter
    try:
        shared.chmod(0o755)
        shutil.copy(npz, shared / "blobs.npz")
        shutil.copytree(finished_run, shared / "run")
        for p in (shared / "run").rglob("*"):  # run files are written 0600 (mkstemp)
            p.chmod(0o755 if p.is_dir() else 0o644)
        locked = shared / "locked"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)
        if command == "train":
            argv = TRAIN + ["--dataset", f"npz:{shared / 'blobs.npz'}", "--out", str(locked / "run")]
        else:
            argv = ["sample", str(shared / "run"), "-n", "4", "--out", str(locked / "s.png")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HOME": str(shared), "MPLCONFIGDIR": str(shared)}
        proc = subprocess.run(
            prefix + [sys.executable, "-m", "vaekit", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=shared,
            env=env,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("vaekit: error: ") and str(locked) in proc.stderr, proc.stderr
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(shared)
