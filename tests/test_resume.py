"""Interrupted runs lose nothing: SIGKILL at random steps, SIGINT and SIGTERM, then --resume.

Every run here is a real `python -m vaekit train` process on 200 generated images (5 steps per
epoch, 2 epochs), one thread each, so that resumed and uninterrupted runs compute identically.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import blob_images

STEPS = 10  # 160 training images / batch 32 = 5 steps per epoch, 2 epochs
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    images, labels = blob_images(200)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, images=images[:, 0], labels=labels)
    return path


def _train_args(npz: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vaekit",
        "train",
        "--dataset",
        f"npz:{npz}",
        "--latent-size",
        "4",
        # A small network: what is tested is the stopping and resuming, not the default model.
        "--blocks",
        "plain",
        "--width",
        "32",
        "--prior",
        "normal",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--checkpoint-every",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]


def _resume(run: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vaekit", "train", "--resume", str(run), "--quiet"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _latest_step(run: Path) -> int:
    try:
        return int((run / "checkpoints" / "latest").read_text().strip().split("-")[1])
    except (OSError, IndexError, ValueError):
        return 0


def _start_and_wait(npz: Path, run: Path, step: int) -> subprocess.Popen:
    """Starts training and returns once its latest checkpoint is at `step` or later."""
    proc = subprocess.Popen(_train_args(npz, run), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _latest_step(run) < step:
        assert proc.poll() is None, f"training ended before step {step}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.005)
    return proc


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    name = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def _metrics_without_timing(run: Path) -> list[list[str]]:
    rows = list(csv.reader((run / "metrics.csv").read_text().splitlines()))  # an objective's name holds commas
    drop = {rows[0].index("seconds"), rows[0].index("images_per_s")}
    return [[v for i, v in enumerate(row) if i not in drop] for row in rows]


def _assert_same_as(run: Path, reference: Path) -> None:
    a, b = _final_weights(run), _final_weights(reference)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run in {different[:3]}"
    assert _metrics_without_timing(run) == _metrics_without_timing(reference)


@pytest.fixture(scope="module")
def reference(npz, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    proc = subprocess.run(_train_args(npz, run), env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _latest_step(run) == STEPS
    return run


def test_sigkill_at_random_steps_then_resume_is_bit_identical(npz, reference, tmp_path):
    seed = random.randrange(10**6)
    steps = sorted(random.Random(seed).sample(range(1, STEPS - 1), 2))
    for step in steps:
        run = tmp_path / f"killed-at-{step}"
        proc = _start_and_wait(npz, run, step)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        killed_at = _latest_step(run)
        assert proc.returncode == -signal.SIGKILL and step <= killed_at < STEPS, (seed, step, killed_at)
        done = _resume(run)
        assert done.returncode == 0, (seed, step, done.stderr)
        assert _latest_step(run) == STEPS
        _assert_same_as(run, reference)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_saves_and_says_how_to_resume(npz, reference, tmp_path, signum, code):
    run = tmp_path / "run"
    proc = _start_and_wait(npz, run, 2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"vaekit train --resume {run}" in lines[0] and "Traceback" not in err, err
    stopped = _latest_step(run)
    assert 2 <= stopped <= STEPS  # a checkpoint at the step where it stopped (or the epoch's end)
    assert f"after step {stopped}" in lines[0]
    if signum == signal.SIGINT:  # and the interrupted run resumes to the very same weights
        done = _resume(run)
        assert done.returncode == 0, done.stderr
        _assert_same_as(run, reference)
