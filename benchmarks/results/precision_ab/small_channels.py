"""The default network's costliest layers on the CPU: BatchNorm of few channels by layout and
precision, and the decoder's last block (a 4x4 stride-2 transposed convolution 24 -> 24 channels
at 32x32, BatchNorm, the gate and the 1x1 head) with its BatchNorm as it is and computed in
NCHW between two layout conversions.

    python benchmarks/results/precision_ab/small_channels.py [--repeats 20]

Prints ms (forward, and forward with backward) and writes small_channels.json beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.models.fast_modules import MatmulConvTranspose2d, twin
from vaekit.models.networks import up_block

CL = torch.channels_last


def ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - t0) / repeats


class ToNCHW(torch.autograd.Function):
    """x to NCHW memory; its gradient back to channels_last."""

    @staticmethod
    def forward(ctx, x):
        return x.contiguous()

    @staticmethod
    def backward(ctx, g):
        return g.contiguous(memory_format=CL)


class ToChannelsLast(torch.autograd.Function):
    """x to channels_last memory; its gradient back to NCHW."""

    @staticmethod
    def forward(ctx, x):
        return x.contiguous(memory_format=CL)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous()


class NCHWBatchNorm(nn.BatchNorm2d):
    """BatchNorm computed in NCHW memory, channels_last in and out (values and gradients)."""

    def forward(self, x):
        return ToChannelsLast.apply(super().forward(ToNCHW.apply(x)))


def batchnorm_rows(repeats: int) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape in ((128, 24, 32, 32), (128, 12, 32, 32), (128, 24, 16, 16), (128, 48, 16, 16)):
            for layout, fmt in (("channels_last", CL), ("NCHW", torch.contiguous_format)):
                x = torch.randn(shape).to(dtype).to(memory_format=fmt).requires_grad_()
                g = torch.randn(shape).to(dtype).to(memory_format=fmt)
                w, b = torch.ones(shape[1], requires_grad=True), torch.zeros(shape[1], requires_grad=True)
                stats = torch.zeros(shape[1]), torch.ones(shape[1])

                def forward():
                    return F.batch_norm(x, *stats, w, b, True, 0.1, 1e-5)

                row = {"what": "BatchNorm2d (training)", "dtype": str(dtype)[6:], "shape": shape, "layout": layout}
                row["forward_ms"] = ms(forward, repeats)
                row["forward_backward_ms"] = ms(lambda: forward().backward(g), repeats)
                rows.append(row)
    return rows


def last_block_rows(repeats: int, rounds: int = 3) -> list[dict]:
    block = nn.Sequential(
        up_block(24, 12, 4, 2, 1, "gated"), twin(nn.ConvTranspose2d(12, 1, 1, 1, 0), MatmulConvTranspose2d)
    ).to(memory_format=CL)
    nchw = copy.deepcopy(block)
    nchw[0][1] = twin(nchw[0][1], NCHWBatchNorm)
    x = torch.randn(128, 24, 16, 16).to(memory_format=CL).requires_grad_()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):  # interleaved: the machine's drift hits both alike
        for precision in ("fp32", "bf16"):
            for variant, module in (("as it is", block), ("BatchNorm in NCHW", nchw)):

                def step():
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        y = module(x)
                    y.float().sum().backward()

                times.setdefault((precision, variant), []).append(ms(step, repeats))
    return [
        {"what": "decoder's last block + head, forward and backward", "precision": p, "variant": v, "ms": sorted(t)}
        for (p, v), t in times.items()
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=str(Path(__file__).with_name("small_channels.json")))
    args = p.parse_args()
    torch.set_num_threads(2)
    bn, block = batchnorm_rows(args.repeats), last_block_rows(args.repeats)
    print(f"{'BatchNorm2d':10} {'shape':18} {'layout':14} {'fwd ms':>7} {'fwd+bwd ms':>11}")
    for r in bn:
        times = f"{r['forward_ms']:7.2f} {r['forward_backward_ms']:11.2f}"
        print(f"{r['dtype']:10} {str(r['shape']):18} {r['layout']:14} {times}")
    print(f"\n{'last block':10} {'variant':20} ms per forward and backward (rounds, sorted)")
    for r in block:
        print(f"{r['precision']:10} {r['variant']:20} {', '.join(f'{t:.1f}' for t in r['ms'])}")
    Path(args.out).write_text(
        json.dumps({"torch": torch.__version__, "batchnorm": bn, "last_block": block}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
