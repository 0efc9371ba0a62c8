"""Data-parallel scaling on this machine: training images/s with 1 and 2 processes, one thread each.

Each configuration is a real `torchrun --standalone --nproc_per_node=N -m vaekit train` on a
Fashion-MNIST training subset; the figure is the global images/s of the last epoch (the first
one pays for warm-up), as the run's metrics.csv records it. Prints a table and writes
benchmarks/results/ddp_scaling.json.

    python benchmarks/ddp_scaling.py [--subset 4096] [--epochs 2] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "ddp_scaling.json"


def run(processes: int, args, workdir: Path) -> dict:
    out = workdir / f"run-{processes}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "vaekit",
        "train",
        "--dataset",
        "fashion-mnist",
        "--train-subset",
        str(args.subset),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--latent-size",
        "32",
        "--quiet",
        "--out",
        str(out),
    ]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"ddp_scaling: {processes} process(es) failed:\n{proc.stderr[-2000:]}")
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    return {
        "processes": processes,
        "threads_per_process": 1,
        "images_per_s": float(last["images_per_s"]),
        "epoch_seconds": float(last["seconds"]),
        "wall_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=4096, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch, split over the processes")
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files (default: found automatically)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        results = [run(n, args, Path(tmp)) for n in (1, 2)]
    base = results[0]["images_per_s"]
    for r in results:
        r["speedup"] = r["images_per_s"] / base
        r["efficiency"] = r["speedup"] / r["processes"]

    print(
        f"DDP scaling, Fashion-MNIST subset {args.subset}, global batch {args.batch_size}, last of "
        f"{args.epochs} epochs, gloo on CPU"
    )
    print(f"{'processes':>9} {'images/s':>10} {'speedup':>8} {'efficiency':>10} {'epoch s':>8}")
    for r in results:
        print(
            f"{r['processes']:>9} {r['images_per_s']:>10.1f} {r['speedup']:>8.2f} "
            f"{r['efficiency']:>10.2f} {r['epoch_seconds']:>8.2f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "ddp_scaling",
        "dataset": "fashion-mnist",
        "train_subset": args.subset,
        "epochs": args.epochs,
        "global_batch": args.batch_size,
        "backend": "gloo",
        "device": "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "results": results,
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
