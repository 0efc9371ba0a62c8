"""The default network's training step with its few-channel 32x32 layers moved out of channels_last,
or its BatchNorm and gate compiled: the levers left for its bf16 step, interleaved in one process.

    python benchmarks/results/precision_ab/layout_ab.py [--rounds 8] [--steps 5] [--variants ...]

Variants (each "PRECISION [CHANGE]"; vaekit's step as `vaekit train` runs it otherwise: fast twins,
channels_last, fused Adam, batch 128, the default network: gated width 96, the VampPrior):
  nchw-last   the decoder's last block (4x4 stride-2 transposed convolution 24 -> 24 channels at
              32x32, BatchNorm, gate) and its 1x1 head in NCHW, converted on the way in
  nchw-outer  nchw-last, and the encoder's first block in NCHW too
  norm-nchw   only the last block's BatchNorm and gate in NCHW, between two conversions
  compile-bn  every block's BatchNorm and gate compiled (inductor), the convolutions eager
  compile     the networks compiled with static shapes (`--compile` asks for dynamic ones)

Each conversion is an autograd function that converts its gradient back too, so no layer
sees a gradient in another layout than its output. Prints ms/step and each variant against
the eager fp32 step; writes layout_ab.json beside this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from profile_step import make_trainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_precision import interleaved_seconds  # noqa: E402

from vaekit.models.speed import compile_networks  # noqa: E402

CL, NCHW = torch.channels_last, torch.contiguous_format
DEFAULT = dict(latent_size=32, components=1, width=96, blocks="gated", prior="vamp", estimator="marginal")


class _Convert(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: torch.memory_format, gradient_layout: torch.memory_format):
        ctx.gradient_layout = gradient_layout
        return x.contiguous(memory_format=layout)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g.contiguous(memory_format=ctx.gradient_layout), None, None


class Convert(nn.Module):
    """To `layout` going forward, the gradient to `gradient_layout` going back."""

    def __init__(self, layout: torch.memory_format, gradient_layout: torch.memory_format) -> None:
        super().__init__()
        self.layout, self.gradient_layout = layout, gradient_layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Convert.apply(x, self.layout, self.gradient_layout)


def change(model: nn.Module, what: str) -> None:
    """Applies one variant's change to the trainer's model in place (the same parameters)."""
    enc, dec = model.encoder, model.decoder
    if what in ("nchw-last", "nchw-outer"):
        last = dec.body[-1].to(memory_format=NCHW)
        dec.head.to(memory_format=NCHW)
        dec.body[-1] = nn.Sequential(Convert(NCHW, CL), *last)
    if what == "nchw-outer":
        first = enc.body[0].to(memory_format=NCHW)
        enc.body[0] = nn.Sequential(Convert(NCHW, NCHW), *first, Convert(CL, NCHW))
    if what == "norm-nchw":
        conv, norm, gate = dec.body[-1]
        dec.body[-1] = nn.Sequential(conv, Convert(NCHW, CL), norm.to(memory_format=NCHW), gate, Convert(CL, NCHW))
    if what == "compile-bn":
        torch._dynamo.config.cache_size_limit = 64  # one graph per block and batch size
        for body in (enc.body, dec.body):
            for i, (conv, norm, gate) in enumerate(list(body)):
                body[i] = nn.Sequential(conv, torch.compile(nn.Sequential(norm, gate), dynamic=False))
    if what == "compile":
        compile_networks(model, dynamic=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument(
        "--variants",
        nargs="+",
        default=[
            "fp32",
            "bf16",
            "bf16 nchw-last",
            "bf16 nchw-outer",
            "bf16 norm-nchw",
            "bf16 compile-bn",
            "bf16 compile",
        ],
    )
    p.add_argument("--out", default=str(Path(__file__).with_name("layout_ab.json")))
    args = p.parse_args()
    torch.set_num_threads(2)
    steps = {}
    for variant in args.variants:
        precision, *what = variant.split()
        trainer, step = make_trainer(argparse.Namespace(**DEFAULT), 128, torch.device("cpu"), precision)
        for w in what:
            change(trainer.model, w)
        for _ in range(4):  # warm-up (and compilation)
            step()
        steps[variant] = step
    seconds = interleaved_seconds(steps, args.rounds, args.steps)
    base = statistics.median(seconds["fp32"]) if "fp32" in seconds else None
    rows = {}
    print(f"{'variant':20} {'ms/step':>8} {'img/s':>7} {'vs fp32':>8} {'rounds (ms)':>14}")
    for key, values in seconds.items():
        m = statistics.median(values)
        rows[key] = {
            "ms_per_step": 1e3 * m,
            "images_per_s": 128 / m,
            "over_eager_fp32": base / m if base else None,
            "ms_per_step_rounds": [1e3 * v for v in values],
        }
        ratio = f"{base / m:7.2f}x" if base else ""
        print(f"{key:20} {1e3 * m:8.1f} {128 / m:7.0f} {ratio:>8} {1e3 * min(values):6.1f}-{1e3 * max(values):.1f}")
    Path(args.out).write_text(json.dumps({"settings": vars(args), "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
