"""The gate's channels_last copy, A/B: training steps of the default network (gated width 96,
the VampPrior, batch 128) with the gate as it was (a * sigmoid(b) on the strided half) and as it
is (`networks.Gate`), interleaved in one process, in fp32 and bf16 autocast.

    python benchmarks/results/gate_ab/ab_gate.py [--width 96] [--rounds 6] [--steps 5]

Prints ms/step and images/s (medians over rounds) and each against the old fp32 step; writes
benchmarks/results/gate_ab/ab_gate.json.
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

from vaekit.models import networks  # noqa: E402


def old_gate(self: networks.Gate, h: torch.Tensor) -> torch.Tensor:
    a, b = h.chunk(2, dim=1)
    return a * torch.sigmoid(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    torch.set_num_threads(2)
    new_gate = networks.Gate.forward
    model = argparse.Namespace(
        latent_size=32, components=1, width=args.width, blocks="gated", prior="vamp", estimator="marginal"
    )
    steps = {p: make_trainer(model, 128, torch.device("cpu"), p)[1] for p in ("fp32", "bf16")}
    for step in steps.values():
        for _ in range(3):
            step()
    seconds: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for precision, step in steps.items():
            for name, forward in (("old", old_gate), ("new", new_gate)):
                networks.Gate.forward = forward  # type: ignore[method-assign]
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                seconds.setdefault(f"{precision} {name}", []).append((time.perf_counter() - t0) / args.steps)
    networks.Gate.forward = new_gate  # type: ignore[method-assign]
    base = statistics.median(seconds["fp32 old"])
    rows = {}
    print(f"{'gate':10} {'ms/step':>8} {'img/s':>7} {'vs old fp32':>12}")
    for key, values in seconds.items():
        m = statistics.median(values)
        rows[key] = {"ms_per_step": 1e3 * m, "images_per_s": 128 / m, "over_old_fp32": base / m}
        print(f"{key:10} {1e3 * m:8.1f} {128 / m:7.0f} {base / m:11.2f}x")
    Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
