"""Data-parallel training with torchrun on CPU (gloo): ranks stay identical, rank 0 alone writes
the run, evaluation and batches split the data without counting anything twice."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import blob_images, make_tiny_splits, tiny_config
from vaekit.cli.main import main
from vaekit.config import ModelConfig
from vaekit.data.batching import epoch_permutation, shard
from vaekit.errors import VaekitError
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import Terms, training_loss
from vaekit.training import validation as bounds
from vaekit.training.distributed import WEIGHT_HASH_ENV, DistContext
from vaekit.training.loop import data_parallel, train

STEPS = 5  # 160 training images, global batch 32 (16 per rank), one epoch


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    images, labels = blob_images(200)
    np.savez(tmp / "blobs.npz", images=images[:, 0], labels=labels)
    out, hashes = tmp / "run", tmp / "weights"
    env = {**os.environ, "OMP_NUM_THREADS": "1", WEIGHT_HASH_ENV: str(hashes)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "vaekit",
            "train",
            "--dataset",
            f"npz:{tmp / 'blobs.npz'}",
            "--latent-size",
            "4",
            "--batch-size",
            "32",
            "--epochs",
            "1",
            "--checkpoint-every",
            "2",
            "--quiet",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
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
    monkeypatch.setattr(bounds, "elbo_terms", identity)
    model = torch.nn.Linear(1, 1)
    seen, count = [], 0
    for rank in range(world):
        ctx = DistContext(rank, world)
        monkeypatch.setattr(ctx, "all_reduce_sum", lambda t: t)  # this rank's share only
        seen += bounds.bound_terms(model, images, 3, False, 0, ctx)["elbo"].round().long().tolist()
        count += bounds.bound_means(model, images, 3, False, 0, ctx)["count"]
    assert sorted(seen) == list(range(1, n + 1))  # no image twice, none padded in, none missing
    assert count == n


# (name, components K, importance samples S, mixture estimator[, levels L])
OBJECTIVES = [
    ("elbo", 1, 1, "marginal"),
    ("iwae", 1, 3, "marginal"),
    ("siwae", 2, 3, "marginal"),
    ("siwae-1", 2, 1, "stratified"),
    ("pathwise", 3, 1, "pathwise"),
    ("pathwise-iwae", 3, 2, "pathwise"),
    ("hierarchy", 1, 1, "marginal", 3),
    ("hierarchy-pathwise-iwae", 2, 2, "pathwise", 2),
]


def _losses_through_ddp(rank: int, world: int, init_file: str, out: str) -> None:
    """Each objective's loss on one batch with one seed, alone and through the DDP wrapper."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x = torch.bernoulli(torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1)))
    rows = {}
    for name, components, samples, estimator, *levels in OBJECTIVES:
        torch.manual_seed(0)
        config = ModelConfig(latent_size=3, width=32, components=components, image_size=28, prior="normal")
        config.levels, config.group_channels = (levels or [1])[0], 2
        model = VAE(config)
        torch.manual_seed(5)
        alone = model(x, iw_samples=samples, estimator=estimator)
        torch.manual_seed(5)
        net = data_parallel(model, torch.device("cpu"))  # held: backward needs the DDP object alive
        wrapped = net(x, iw_samples=samples, estimator=estimator)
        training_loss(wrapped).backward()  # the gradient all-reduce runs, as in training
        rows[name] = {
            "alone": training_loss(alone).item(),
            "ddp": training_loss(wrapped).item(),
            "flags": (alone.importance_weighted, alone.latent_size)
            == (wrapped.importance_weighted, wrapped.latent_size),
        }
    Path(f"{out}.rank{rank}").write_text(json.dumps(rows))
    dist.destroy_process_group()
    # Leave without the interpreter's exit-time destructors: in full-suite runs a spawned rank now
    # and then aborted there ("terminate called without an active exception") after its work was done.
    os._exit(0)


def test_the_ddp_wrapper_trains_the_same_loss_as_one_process(tmp_path):
    mp.spawn(_losses_through_ddp, args=(2, str(tmp_path / "init"), str(tmp_path / "losses")), nprocs=2)
    for rank in range(2):
        rows = json.loads(Path(f"{tmp_path / 'losses'}.rank{rank}").read_text())
        for name, *_ in OBJECTIVES:
            assert rows[name]["ddp"] == pytest.approx(rows[name]["alone"], rel=1e-6), (rank, name)
            assert rows[name]["flags"], (rank, name)
        assert rows["iwae"]["alone"] != pytest.approx(
            rows["elbo"]["alone"], rel=1e-3
        )  # the bounds differ: a real check


def test_an_iwae_run_of_a_hierarchy_under_torchrun_trains_on_the_bound(tmp_path):
    images, labels = blob_images(100)
    np.savez(tmp_path / "blobs.npz", images=images[:, 0], labels=labels)
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "vaekit",
            "train",
            "--dataset",
            f"npz:{tmp_path / 'blobs.npz'}",
            "--latent-size",
            "4",
            "--width",
            "32",
            "--batch-size",
            "32",
            "--epochs",
            "1",
            "--iw-samples",
            "3",
            "--levels",
            "2",
            "--group-channels",
            "2",
            "--quiet",
            "--out",
            str(out),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "metrics.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["objective"] == "iwae(3)"
    assert float(row["train_loss"]) == pytest.approx(-float(row["train_elbo"]), rel=1e-5)
    kl = float(row["val_kl_z2"]) + float(row["val_kl_z1"])  # validation over both ranks' shares
    assert kl == pytest.approx(float(row["val_kl"]), rel=1e-4)


def _what_is_left_of_the_group() -> dict:
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # a thread that ended while we looked
            pass
    return {"initialized": dist.is_initialized(), "gloo": [n for n in names if "gloo" in n]}


def _nan_from_the_third_step() -> None:
    real, calls = VAE.forward, [0]

    def forward(self, x, *args, **kwargs):
        terms = real(self, x, *args, **kwargs)
        calls[0] += self.training
        return dataclasses.replace(terms, recon=terms.recon * float("nan")) if calls[0] >= 3 else terms

    VAE.forward = forward  # this spawned rank's own copy of the class


def _train_under_env_then_list_gloo_threads(rank: int, world: int, port: int, out: str, ending: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    config = tiny_config(model__width=32)
    config.train.checkpoint_every = 2  # a checkpoint mid-epoch: its all_gather of the RNG states too
    if ending == "a NaN":
        _nan_from_the_third_step()
    try:
        train(config, out=Path(out) / "run", data=make_tiny_splits(), progress=False)
        seen = {**_what_is_left_of_the_group(), "error": ""}
    except VaekitError as exc:  # looked at while the traceback still holds every frame of the run
        seen = {**_what_is_left_of_the_group(), "error": str(exc)}
    Path(f"{out}/threads.rank{rank}").write_text(json.dumps(seen))
    os._exit(0)  # where the check fails, its answer reaches the test instead of an abort at exit


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through Linux's /proc")
@pytest.mark.parametrize("ending", ["the last epoch", "a NaN"])
def test_training_ends_the_process_group_and_its_gloo_threads(ending, tmp_path):
    # A gloo thread left running at interpreter exit aborted ranks (SIGABRT) when it freed a
    # collective's tensors: the process group must really end before train() returns or raises.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_train_under_env_then_list_gloo_threads, args=(2, port, str(tmp_path), ending), nprocs=2)
    for rank in range(2):
        seen = json.loads((tmp_path / f"threads.rank{rank}").read_text())
        assert seen["initialized"] is False and seen["gloo"] == [], rank
        assert ("non-finite loss at step 3" in seen["error"]) == (ending == "a NaN"), seen["error"]
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()
