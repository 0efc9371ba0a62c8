"""fp32 against bf16, eager against compiled: vaekit's training step (vaekit.training.step, as
`vaekit train` runs it: fast twins, channels_last, fused Adam, batch 128) for the default
network (gated width 96, the VampPrior) and the notebook's (plain width 256, N(0, I)),
interleaved in one process so that the machine's drift hits every variant alike.

    python benchmarks/results/precision_ab/ab_precision.py [--rounds 6] [--steps 5] [--nets default notebook]
        [--variants "fp32" "bf16" "bf16 compile"]

Prints ms/step and images/s (medians over rounds) and each against the same network's eager
fp32 step; writes benchmarks/results/precision_ab/ab_precision.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from profile_step import make_trainer  # noqa: E402

NETS = {
    "default": dict(latent_size=32, components=1, width=96, blocks="gated", prior="vamp", estimator="marginal"),
    "notebook": dict(latent_size=32, components=1, width=256, blocks="plain", prior="normal", estimator="marginal"),
}


def interleaved_seconds(steps: dict, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Seconds a step of each of `steps` (name -> callable) took, per round: every round times
    `per_round` steps of each in turn, so the machine's drift hits each alike."""
    seconds: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                step()
            seconds[key].append((time.perf_counter() - t0) / per_round)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--variants", nargs="+", default=["fp32", "bf16", "fp32 compile", "bf16 compile"])
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    torch.set_num_threads(2)
    steps, compile_s = {}, {}
    for net in args.nets:
        for variant in args.variants:
            precision, compiled = variant.split()[0], "compile" in variant
            settings = argparse.Namespace(**NETS[net])
            step = make_trainer(settings, args.batch, torch.device("cpu"), precision, compiled)[1]
            t0 = time.perf_counter()
            step()
            compile_s[f"{net} {variant}"] = time.perf_counter() - t0
            for _ in range(3):
                step()
            steps[f"{net} {variant}"] = step
    seconds = interleaved_seconds(steps, args.rounds, args.steps)
    rows = {}
    print(f"{'network variant':24} {'ms/step':>8} {'img/s':>7} {'vs fp32':>8} {'first step s':>13}")
    for key, values in seconds.items():
        m = statistics.median(values)
        base = statistics.median(seconds[f"{key.split()[0]} fp32"]) if f"{key.split()[0]} fp32" in seconds else m
        rows[key] = {
            "ms_per_step": 1e3 * m,
            "images_per_s": args.batch / m,
            "over_eager_fp32": base / m,
            "first_step_s": compile_s[key],
            "ms_per_step_rounds": [1e3 * v for v in values],
        }
        print(f"{key:24} {1e3 * m:8.1f} {args.batch / m:7.0f} {base / m:7.2f}x {compile_s[key]:13.1f}")
    result = {"settings": vars(args), "torch": torch.__version__, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
