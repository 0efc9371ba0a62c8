"""Where a training step's time goes: vaekit.training.step.training_step under torch.profiler.

    python benchmarks/profile_step.py --device cuda [--width 128] [--components 1] [--estimator marginal]
    python benchmarks/profile_step.py --device cpu --blocks gated --width 96 --prior vamp --batches 128 --compile

Times the step vaekit.training.loop runs (build_trainer, make_batch, training_step: fused Adam, finite
flags, no host sync) at several batch sizes, with the networks in fp32 (the default) and under
bf16 autocast (`--precision bf16`) on a GPU or a CPU with bf16 units, then profiles 20 steps of
--precision and prints the operators that take the most host time and the kernels launched per step. `--compile` also
times the step with the networks compiled (`vaekit train --compile`), between two eager timings,
and the first step's seconds (the compiling). On a GPU a small
network's step is bound by the host (Python and kernel launches), not by arithmetic: the
images/s at growing batch sizes show how far. Writes benchmarks/results/profile_step.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from vaekit.config import BLOCKS, DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.config.registry import priors
from vaekit.data.batching import make_batch
from vaekit.devices import cpu_has_fast_bf16
from vaekit.training.distributed import DistContext
from vaekit.training.step import build_trainer, training_step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(
    args: argparse.Namespace, batch: int, device: torch.device, precision: str = "fp32", compile: bool = False
):
    config = RunConfig(
        ModelConfig(
            latent_size=args.latent_size,
            components=args.components,
            width=args.width,
            blocks=args.blocks,
            prior=args.prior,
        ),
        DataConfig(dataset="fashion-mnist"),
        TrainConfig(
            batch_size=batch, device=device.type, mixture_estimator=args.estimator, precision=precision, compile=compile
        ),
    )
    trainer = build_trainer(config, None, None, DistContext(), device)
    images = torch.randint(0, 256, (batch, 1, 32, 32), dtype=torch.uint8, device=device)
    index = torch.arange(batch, device=device)
    fmt = torch.channels_last
    return trainer, lambda: training_step(trainer, make_batch(images, index, True, fmt), 1e-3, 1.0)


def images_per_s(
    args: argparse.Namespace, batch: int, precision: str, device: torch.device, compile: bool = False
) -> tuple[float, float]:
    """The median images/s of the timed repeats, and the seconds the first step took."""
    _, step = make_trainer(args, batch, device, precision, compile)
    sync(device)
    started = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - started
    for _ in range(4):
        step()
    rates = []
    for _ in range(args.repeats):
        sync(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        rates.append(args.steps * batch / (time.perf_counter() - started))
    return statistics.median(rates), first


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--components", type=int, default=1)
    p.add_argument("--latent-size", type=int, default=32)
    p.add_argument("--blocks", default="plain", choices=BLOCKS)
    p.add_argument("--prior", default="normal", choices=tuple(priors()))
    p.add_argument("--estimator", default="marginal")
    p.add_argument("--precision", default="fp32", help="the profiled step's: fp32 (default) or bf16")
    p.add_argument("--batches", default="128,512,2048", help="batch sizes to time (default 128,512,2048)")
    p.add_argument("--steps", type=int, default=30, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time the step with compiled networks")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "profile_step.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rates, first_step_s = {}, {}
    # Eager, compiled, eager again: the machine's drift shows in the two eager rows.
    ways = ("", ", compiled", ", again") if args.compile else ("",)
    for batch in [int(b) for b in args.batches.split(",")]:
        for precision in ("fp32", "bf16") if device.type == "cuda" or cpu_has_fast_bf16() else ("fp32",):
            for way in ways:
                key = f"batch {batch}, {precision}{way}"
                rates[key], first_step_s[key] = images_per_s(args, batch, precision, device, way == ", compiled")
                print(
                    f"{key:32} {rates[key]:12.0f} images/s  {1e3 * batch / rates[key]:8.2f} ms/step"
                    f"  first step {first_step_s[key]:6.1f} s",
                    flush=True,
                )

    _, step = make_trainer(args, 128, device, args.precision)
    for _ in range(5):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    steps = 20
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
    kernels = sum(e.count for e in events if e.device_type.name == "CUDA")
    cpu_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    gpu_ms = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") / 1e3 / steps
    summary = {"kernels_per_step": kernels / steps, "host_ms_per_step": cpu_ms, "device_ms_per_step": gpu_ms}
    print(json.dumps(summary))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"settings": vars(args), "images_per_s": rates, "first_step_s": first_step_s, "batch_128": summary},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
