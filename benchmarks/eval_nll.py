"""Throughput of the importance-sampled NLL on the path `vaekit evaluate` takes.

    python benchmarks/eval_nll.py [--width 128] [--blocks plain] [--levels 2] [--images 200] [--samples 200]
        [--chunks 1024,2048] [--pieces 0,200] [--crops 0,1] [--compile] [--repeats 3]

Times speed.inference_model (fast twins, BatchNorm folded, channels_last; compiled with
--compile) on each chunk size (decoded images per chunk of draws), piece size (decoded
images per single-threaded worker call on a CPU, decoding.CPU_PIECE_IMAGES; 0 decodes each chunk
in one call on all threads) and crop (1: the decoder's last layer computes only the data's
28x28 pixels, speed.crop_in_decoder; 0: the 32x32 frame, cropped after), K=1 and K=5 models, and
states the minutes the literature's protocol (10,000 test images, S=1,000) would take at that
rate. Models are untrained: the estimator's cost is one decoder pass per sample, which training
does not change. Test images are Fashion-MNIST binarised with the evaluation seed when the
dataset is found, random binary images otherwise. Prints a table and writes
benchmarks/results/eval_nll.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from vaekit import __version__
from vaekit.config import BLOCKS, ModelConfig
from vaekit.config.registry import priors
from vaekit.data.batching import binarize_fixed
from vaekit.errors import VaekitError
from vaekit.evaluation.evaluate import EVAL_BINARIZE_SEED
from vaekit.models.speed import inference_model
from vaekit.models.vae import VAE
from vaekit.objectives import decoding
from vaekit.objectives.bounds import log_likelihood_estimate

PROTOCOL_SAMPLES = 10_000 * 1_000


def load_test_images(n: int) -> tuple[torch.Tensor, str]:
    try:
        from vaekit.data import load_dataset

        data = load_dataset("fashion-mnist", download=False)
        return binarize_fixed(data.test.images[:n], EVAL_BINARIZE_SEED), "fashion-mnist test, binarised"
    except VaekitError:
        return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3)), "random binary images"


def time_estimate(model, x: torch.Tensor, samples: int, batch_size: int, chunk: int) -> tuple[float, float]:
    with torch.inference_mode():
        log_likelihood_estimate(model, x[:batch_size], min(samples, 2 * chunk // batch_size + 1), chunk)  # warm-up
        torch.manual_seed(0)
        started = time.perf_counter()
        nll = torch.cat(
            [
                -log_likelihood_estimate(model, x[i : i + batch_size], samples, chunk)
                for i in range(0, len(x), batch_size)
            ]
        )
        return time.perf_counter() - started, float(nll.mean())


def rate_row(setting: tuple, samples: int, seconds: float) -> dict:
    k, compiled, crop, chunk, piece = setting
    rate = samples / seconds
    return {
        "components": k,
        "compiled": compiled,
        "crop_in_decoder": crop,
        "chunk": chunk,
        "piece": piece,
        "seconds": seconds,
        "importance_samples_per_s": rate,
        "protocol_minutes": PROTOCOL_SAMPLES / rate / 60,
    }


# (title, width, rate_row's key, format): one place for the table's columns.
COLUMNS = (
    ("K", 2, "components", ""),
    ("compiled", 8, "compiled", ""),
    ("crop", 5, "crop_in_decoder", ""),
    ("chunk", 6, "chunk", ""),
    ("piece", 6, "piece", ""),
    ("seconds", 8, "seconds", ".1f"),
    ("samples/s", 10, "importance_samples_per_s", ".0f"),
    ("protocol min", 13, "protocol_minutes", ".1f"),
)
HEADER = " ".join(f"{title:>{width}}" for title, width, _, _ in COLUMNS)


def format_row(r: dict) -> str:
    return " ".join(
        f"{r[key]:>{width}{spec}}" if spec else f"{str(r[key]):>{width}}" for _, width, key, spec in COLUMNS
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--blocks", default="plain", choices=BLOCKS)
    parser.add_argument("--prior", default="normal", choices=tuple(priors()))
    parser.add_argument("--components", default="1,5")
    parser.add_argument("--levels", type=int, default=1, help="latent groups L (2 and up: the hierarchy)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100, help="test images per call (vaekit evaluate's)")
    parser.add_argument("--chunks", default="1024,2048,4096,8192")
    parser.add_argument(
        "--pieces",
        default=f"0,{decoding.CPU_PIECE_IMAGES}",
        help="decoded images per worker call; 0: one call per chunk",
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd networks")
    parser.add_argument(
        "--crops",
        default="1",
        help="1: the decoder computes only the data's pixels (vaekit.models.speed.crop_in_decoder); 0: all",
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all settings, interleaved")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_nll.json"))
    args = parser.parse_args()
    x, source = load_test_images(args.images)
    models = {}
    for k in map(int, args.components.split(",")):
        torch.manual_seed(0)
        base = VAE(
            ModelConfig(
                latent_size=32,
                components=k,
                image_size=28,
                width=args.width,
                blocks=args.blocks,
                prior=args.prior,
                levels=args.levels,
            )
        )
        for compiled in (False, True) if args.compile else (False,):
            for crop in (bool(int(c)) for c in args.crops.split(",")):
                models[k, compiled, crop] = inference_model(base, compile=compiled, crop=crop)
    settings = [
        (*key, chunk, piece)
        for key in models
        for chunk in map(int, args.chunks.split(","))
        for piece in map(int, args.pieces.split(","))
    ]
    print(f"{HEADER} {'round':>5}")
    rows, seconds_by_setting = [], {setting: [] for setting in settings}
    # Rounds interleave the settings, so that this machine's drift from minute to minute falls
    # on all of them alike; the summary takes each setting's median.
    for round_ in range(args.repeats):
        for setting in settings:
            k, compiled, crop, chunk, piece = setting
            decoding.CPU_PIECE_IMAGES = piece or chunk
            seconds, nll = time_estimate(models[k, compiled, crop], x, args.samples, args.batch_size, chunk)
            seconds_by_setting[setting].append(seconds)
            row = rate_row(setting, len(x) * args.samples, seconds)
            rows.append({**row, "round": round_, "images": len(x), "samples": args.samples, "mean_nll_untrained": nll})
            print(f"{format_row(row)} {round_:>5}")
    medians = [rate_row(s, len(x) * args.samples, statistics.median(t)) for s, t in seconds_by_setting.items()]
    if args.repeats > 1:
        print(f"medians over {args.repeats} rounds:\n{HEADER}")
        for row in medians:
            print(format_row(row))
    record = {
        "rows": rows,
        "medians": medians,
        "data": source,
        "model": f"untrained, {args.blocks} blocks, width {args.width}, latent 32, speed.inference_model",
        "batch_size": args.batch_size,
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
