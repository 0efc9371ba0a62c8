"""Data-parallel training with torchrun on CPU (gloo): ranks stay identical, rank 0 alone writes
the run, evaluation and batches split the data without counting anything twice."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import blob_images
from vaekit import evaluate
from vaekit.batching import epoch_permutation, shard
from vaekit.cli import main
from vaekit.distributed import WEIGHT_HASH_ENV, DistContext
from vaekit.objectives import Terms

STEPS = 5  # 160 training images, global batch 32 (16 per rank), one epoch


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    images, labels = blob_images(200)
    np.savez(tmp / "blobs.npz", images=images[:, 0], labels=labels)
    out, hashes = tmp / "run", tmp / "weights"
    env = {**os.environ, "OMP_NUM_THREADS": "1", WEIGHT_HASH_ENV: str(hashes)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vaekit", "train",
         "--dataset", f"npz:{tmp / 'blobs.npz'}", "--latent-size", "4", "--batch-size", "32", "--epochs", "1",
         "--checkpoint-every", "2", "--quiet", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, hashes, proc


def test_both_ranks_hold_identical_weights_after_every_step(ddp_run):
    _, hashes, _ = ddp_run
    rank0 = Path(f"{hashes}.rank0").read_text().splitlines()
    rank1 = Path(f"{hashes}.rank1").read_text().splitlines()
    assert [line.split()[0] for line in rank0] == [str(s) for s in range(1, STEPS + 1)]
    assert rank0 == rank1
    assert len({line.split()[1] for line in rank0}) == STEPS  # and the weights did move each step


def test_the_run_directory_is_written_once(ddp_run):
    out, _, proc = ddp_run
    assert proc.stdout.split() == [str(out)]  # only rank 0 prints the run directory
    assert proc.stderr.count("epoch 1/1") == 1  # and the epoch line
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", str(STEPS))]
    names = {p.name for p in out.rglob("*")}
    assert {"config.json", "metrics.csv", "samples.png"} <= names
    assert not [n for n in names if n.endswith(".tmp") or "rank" in n]  # no half-written or per-rank files
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "latest", f"step-{STEPS:09d}"]


def test_the_result_loads_with_vaekit_sample(ddp_run, tmp_path):
    out, _, _ = ddp_run
    png = tmp_path / "s.png"
    assert main(["sample", str(out), "-n", "4", "--out", str(png)]) == 0
    assert png.stat().st_size > 0


def test_each_rank_takes_a_disjoint_equal_share_of_the_epoch():
    order = epoch_permutation(103, seed=5, epoch=2)
    for world in (1, 2, 3, 4):
        shares = [shard(order, r, world) for r in range(world)]
        assert len({len(s) for s in shares}) == 1
        flat = torch.cat(shares).tolist()
        assert len(flat) == len(set(flat)) == 103 // world * world
    assert not torch.equal(order, epoch_permutation(103, seed=5, epoch=3))  # reseeded per epoch


@pytest.mark.parametrize("n, world", [(7, 2), (7, 3), (20, 4), (2, 3)])
def test_evaluation_counts_every_image_exactly_once(n, world, monkeypatch):
    # Images whose pixel sum identifies them, and bound terms that return that identity.
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images.view(n, -1)[:, 0] = torch.arange(1, n + 1, dtype=torch.uint8)
    identity = lambda model, x: Terms(x.flatten(1).sum(1) * 255, torch.ones(len(x)), torch.zeros(len(x)))  # noqa: E731
    monkeypatch.setattr(evaluate, "elbo_terms", identity)
    model = torch.nn.Linear(1, 1)
    seen, count = [], 0
    for rank in range(world):
        ctx = DistContext(rank, world)
        monkeypatch.setattr(ctx, "all_reduce_sum", lambda t: t)  # this rank's share only
        seen += evaluate.bound_terms(model, images, 3, False, 0, ctx)["elbo"].round().long().tolist()
        count += evaluate.bound_means(model, images, 3, False, 0, ctx)["count"]
    assert sorted(seen) == list(range(1, n + 1))  # no image twice, none padded in, none missing
    assert count == n
