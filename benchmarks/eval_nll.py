"""Throughput of the importance-sampled NLL: importance samples per second, K=1 and K=5.

    python benchmarks/eval_nll.py [--images 1000] [--samples 1000] [--chunk 2048]

Models are untrained (default architecture, latent 32): the estimator's cost is one decoder
pass per sample, which training does not change. Test images are Fashion-MNIST binarised
with the evaluation seed when the dataset is found, random binary images otherwise.
Prints a table and writes benchmarks/results/eval_nll.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from vaekit import __version__
from vaekit.batching import binarize_fixed
from vaekit.config import ModelConfig
from vaekit.errors import VaekitError
from vaekit.evaluate import EVAL_BINARIZE_SEED, log_likelihood_estimate
from vaekit.model import VAE


def load_test_images(n: int) -> tuple[torch.Tensor, str]:
    try:
        from vaekit.data import load_dataset

        data = load_dataset("fashion-mnist", download=False)
        return binarize_fixed(data.test.images[:n], EVAL_BINARIZE_SEED), "fashion-mnist test, binarised"
    except VaekitError:
        return torch.bernoulli(torch.full((n, 1, 32, 32), 0.3)), "random binary images"


def time_estimate(components: int, x: torch.Tensor, samples: int, batch_size: int, chunk: int) -> dict:
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=32, components=components, image_size=28)).eval()
    with torch.inference_mode():
        log_likelihood_estimate(model, x[:8], 8, chunk)  # warm-up: first-call allocations
        started = time.perf_counter()
        nll = torch.cat(
            [
                -log_likelihood_estimate(model, x[i : i + batch_size], samples, chunk)
                for i in range(0, len(x), batch_size)
            ]
        )
        seconds = time.perf_counter() - started
    rate = len(x) * samples / seconds
    return {
        "components": components,
        "images": len(x),
        "samples": samples,
        "seconds": seconds,
        "importance_samples_per_s": rate,
        "seconds_for_S1000_on_1000_images": 1e6 / rate,
        "mean_nll_untrained": float(nll.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--chunk", type=int, help="decoded images per chunk (default: objectives.nll_chunk)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_nll.json"))
    args = parser.parse_args()
    x, source = load_test_images(args.images)
    rows = [time_estimate(k, x, args.samples, args.batch_size, args.chunk) for k in (1, 5)]
    print(f"{'K':>2} {'images':>7} {'S':>6} {'seconds':>9} {'samples/s':>11} {'S=1000 x 1000 img (s)':>22}")
    for r in rows:
        print(
            f"{r['components']:>2} {r['images']:>7} {r['samples']:>6} {r['seconds']:>9.1f} "
            f"{r['importance_samples_per_s']:>11.0f} {r['seconds_for_S1000_on_1000_images']:>22.1f}"
        )
    record = {
        "rows": rows,
        "data": source,
        "model": "untrained, default architecture, latent 32",
        "batch_size": args.batch_size,
        "chunk": args.chunk,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "machine": platform.machine(),
        "vaekit": __version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
