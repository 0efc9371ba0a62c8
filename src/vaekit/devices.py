"""Which device a run uses (`--device auto` is CUDA where there is one) and which arithmetic
its networks run in (`--precision auto`: bf16 where the processor has bf16 units)."""

from __future__ import annotations

import functools
import platform
import sys
import time
from typing import Callable

import torch

from vaekit.errors import VaekitError

# A bf16 convolution must run at least this much faster than an fp32 one for the micro-benchmark
# to pick bf16 (this CPU's bf16 units ran it ~2.3x; a processor that emulates bf16 runs it slower).
BF16_MIN_SPEEDUP = 1.3


def resolve_device(kind: str) -> torch.device:
    """The device `--device` names; auto is CUDA where there is one."""
    if kind == "cuda" and not torch.cuda.is_available():
        raise VaekitError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(kind)


def resolve_precision(requested: str, device: torch.device, warn: bool = False) -> str:
    """The arithmetic `--precision` names for the networks on `device`: "fp32" or "bf16".

    "auto" is bf16 on a CPU with bf16 units (AVX512_BF16 or AMX) and fp32 elsewhere, a GPU
    included: on the H100s measured, vaekit's launch-bound step ran 1.00-1.30x faster in fp32.
    With `warn`, bf16 on a CPU that emulates it prints `emulated_bf16_warning` to stderr.
    """
    if requested == "auto":
        requested = "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if warn and (slow := emulated_bf16_warning(requested, device)):
        print(f"vaekit: warning: {slow}", file=sys.stderr)
    return requested


def emulated_bf16_warning(precision: str, device: torch.device) -> str | None:
    """The warning for networks in bf16 on a CPU without bf16 units (`--precision bf16`, or a run
    resumed from a machine that had them), where PyTorch emulates bf16: on an AVX2 AMD EPYC a bf16
    convolution ran 10x and a matrix product 110x slower than fp32. None where bf16 is fast or unused."""
    if precision != "bf16" or device.type != "cpu" or cpu_has_fast_bf16():
        return None
    return (
        "this CPU has no bf16 units (AVX512_BF16 or AMX), so bf16 is emulated and runs several times slower "
        "than fp32; train with --precision fp32 or auto (also on --resume)"
    )


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 arithmetic in hardware: its instruction-set flags where they are
    known, else a short micro-benchmark (`bf16_conv_speedup`) decides."""
    units = cpu_bf16_units()
    if units is None:
        return bf16_conv_speedup() >= BF16_MIN_SPEEDUP
    return units


def cpu_bf16_units() -> bool | None:
    """True for an x86 CPU with AVX512_BF16 or AMX tiles, False for one without, None where the
    flags cannot be read (another architecture, or a torch without the probes)."""
    probes: list[Callable[[], bool]] = [
        getattr(torch.cpu, name)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        if hasattr(torch.cpu, name)
    ]
    if len(probes) < 2 or platform.machine().lower() not in ("x86_64", "amd64", "x64"):
        return None
    return any(probe() for probe in probes)


def bf16_conv_speedup(repeats: int = 3) -> float:
    """fp32 time over bf16 time of a 3x3 convolution (128 channels, 64 images of 16x16,
    channels_last) on this CPU's threads: the best of `repeats` each, after two warm-up calls
    (oneDNN builds its kernels on the first); about a second."""
    x = torch.randn(64, 128, 16, 16).to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def best(dtype: torch.dtype) -> float:
        xs, c = x.to(dtype), conv.to(dtype)
        with torch.no_grad():
            c(xs), c(xs)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                c(xs)
                times.append(time.perf_counter() - start)
        return min(times)

    return best(torch.float32) / best(torch.bfloat16)
