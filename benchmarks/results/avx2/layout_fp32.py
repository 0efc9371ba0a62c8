"""channels_last against NCHW for fp32 training steps on a CPU without bf16 units (AVX2), where
`--precision auto` trains in fp32: vaekit's step (vaekit.training.step, as `vaekit train` runs it)
of the default network (gated width 96, the VampPrior) and of the shipped hierarchy's
(`--levels 2 --group-channels 2 --width 128`), interleaved in one process
(ab_precision.interleaved_seconds) so the machine's drift hits every variant alike.

    python benchmarks/results/avx2/layout_fp32.py [--rounds 8] [--steps 4]

Prints ms/step, images/s and each NCHW step against the same network's channels_last one (the
default), paired by round; writes benchmarks/results/avx2/layout_fp32.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "precision_ab"))
from ab_precision import interleaved_seconds  # noqa: E402

from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from vaekit.data.batching import make_batch  # noqa: E402
from vaekit.training.distributed import DistContext  # noqa: E402
from vaekit.training.step import build_trainer, memory_format, training_step  # noqa: E402

NETS = {
    "default": ModelConfig(),
    "hierarchy": ModelConfig(levels=2, group_channels=2, width=128),
}


def make_step(model: ModelConfig, batch: int, channels_last: bool):
    """One fp32 training step of `model` on a fixed batch of random binary images."""
    config = RunConfig(
        model, DataConfig(), TrainConfig(batch_size=batch, precision="fp32", channels_last=channels_last)
    )
    trainer = build_trainer(config, None, None, DistContext(), torch.device("cpu"))
    fmt = memory_format(config.train, trainer.model)
    images = torch.randint(0, 256, (batch, 1, 32, 32), dtype=torch.uint8)  # the data's 28 pixels in a zero frame
    index = torch.arange(batch)
    return lambda: training_step(trainer, make_batch(images, index, True, fmt), 1e-3, 1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    torch.set_num_threads(2)
    steps = {}
    for net, model in NETS.items():
        for layout, channels_last in (("channels_last", True), ("NCHW", False)):
            step = make_step(ModelConfig(**vars(model)), args.batch, channels_last)
            for _ in range(3):
                step()
            steps[f"{net} {layout}"] = step
    seconds = interleaved_seconds(steps, args.rounds, args.steps)
    rows = {}
    print(f"{'network layout':24} {'ms/step':>8} {'img/s':>7} {'NCHW speed-up, paired':>24}")
    for key, values in seconds.items():
        m = statistics.median(values)
        row = {"ms_per_step": 1e3 * m, "images_per_s": args.batch / m, "ms_per_step_rounds": [1e3 * v for v in values]}
        text = ""
        if key.endswith("NCHW"):
            base = seconds[key.replace("NCHW", "channels_last")]
            ratios = [b / v for b, v in zip(base, values)]
            mean, se = statistics.mean(ratios), statistics.stdev(ratios) / math.sqrt(len(ratios))
            row["speedup_over_channels_last"] = {"mean": mean, "se": se}
            text = f"{mean:.3f} ± {se:.3f}"
        rows[key] = row
        print(f"{key:24} {1e3 * m:8.1f} {args.batch / m:7.0f} {text:>24}")
    result = {"settings": vars(args), "torch": torch.__version__, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
