"""Throughput of vaekit against this machine's arithmetic ceiling, in one run.

    python benchmarks/throughput.py                 # full run (a few minutes on 2 cores)
    python benchmarks/throughput.py --quick         # smoke run (~1 minute)
    python benchmarks/throughput.py --repeats 5 --threads 2 --compile --device cuda
    python benchmarks/throughput.py --only "vaekit K=1" "vaekit K=5 pathwise" "vaekit K=20 pathwise"
    python benchmarks/throughput.py --only "vaekit K=1" "vaekit K=1 bf16" "default K=1" "default K=1 bf16"

Measures, with median and min/max over --repeats:
  ceiling     per precision (fp32, bf16 where the CPU has bf16 units), the faster of a 2048x2048 matrix
              product and a large 3x3 convolution through oneDNN (256 channels, 128 images of 16x16,
              channels_last), GFLOP/s; without bf16 units the bf16 ceiling and rows are skipped
  naive       a plain eager NCHW training loop of the notebook's network, written below (K=1, K=5;
              K=5 decodes each mixture component in its own decoder call, as a first attempt would;
              "bf16": the same step with torch.autocast around the loss)
  vaekit      vaekit.training.loop.train itself (what `vaekit train` runs) on Fashion-MNIST, batching and
              binarisation included: images/s from the run's metrics (each epoch after the first is one
              repeat); "vaekit" rows train the notebook's network (plain, width 256, N(0, I) prior),
              "default" rows today's defaults (gated width 96, the VampPrior); K=5 and K=20 with
              --mixture-estimator pathwise; "bf16" and "compile" rows force --precision bf16 and --compile
  inference   encode+decode (posterior mean) of the plain eval model and of speed.inference_model
  nll         importance-sampled log-likelihood (evaluate.log_likelihood_estimate) in samples/s
  data        make_batch against the whole step; finite checks + grad norm against the step
FLOPs are counted once per row with torch.utils.flop_counter.FlopCounterMode; GFLOP/s is
FLOPs x rate, and a row's share is that over the ceiling of the precision it ran in (an fp32 matmul
alone understates this CPU: its oneDNN convolution runs faster). Writes benchmarks/results/throughput.json.

Each row runs in a fresh child process, one after another: measured all in one process,
vaekit's K=5 epochs slowed from 152 to 90 images/s after the rows before it, while the same call
in a fresh process held 139-157. Each child measures the ceilings just before and after its
row, and the row's share is of those: this shared VM's speed drifts by up to a third within
minutes (the parent also measures it before and after all rows, to show the drift).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import vaekit
from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.data import ImageSet, load_dataset
from vaekit.data.batching import binarize_fixed, make_batch
from vaekit.devices import cpu_has_fast_bf16
from vaekit.evaluation.evaluate import log_likelihood_estimate
from vaekit.models.speed import inference_model, set_threads, training_networks, warm_up
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import training_loss
from vaekit.runs.run_dir import read_metrics
from vaekit.training.distributed import DistContext
from vaekit.training.loop import train
from vaekit.training.stops import StepChecks, check_every, non_finite_flags

BATCH = 128
LATENT = 32
WIDTH = 256  # NaiveVAE's (the notebook's) channels: vaekit's rows time the same network
SAME_NETWORK = dict(width=WIDTH, blocks="plain", prior="normal")  # as NaiveVAE, whatever the defaults
DEFAULT_NETWORK: dict = {}  # ModelConfig's defaults: gated blocks at width 96, the VampPrior
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------- timing helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(device: torch.device, repeats: int, dtype: torch.dtype = torch.float32, n: int = 2048) -> list[float]:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    reps = 10 if device.type == "cpu" else 200
    for _ in range(3):
        a @ b
    return [2 * n**3 * reps / timed(lambda: [a @ b for _ in range(reps)], device) / 1e9 for _ in range(repeats)]


def conv_rate(device: torch.device, repeats: int, dtype: torch.dtype = torch.float32) -> list[float]:
    """A large 3x3 convolution (256 channels, 128 images of 16x16, channels_last): oneDNN's best case."""
    x = torch.randn(128, 256, 16, 16, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device, dtype, memory_format=torch.channels_last)
    flop = 2 * 256 * 256 * 9 * 128 * 16 * 16
    reps = 2 if device.type == "cpu" else 50
    with torch.no_grad():
        for _ in range(2):
            conv(x)
        return [flop * reps / timed(lambda: [conv(x) for _ in range(reps)], device) / 1e9 for _ in range(repeats)]


def measured_precisions(device: torch.device) -> list[str]:
    """fp32, and bf16 where the hardware runs it: on a CPU without bf16 units (AVX512_BF16 or AMX)
    PyTorch emulates bf16 (an AVX2 AMD EPYC ran a bf16 matrix product 110x slower than fp32), so its
    ceiling and rows would take many minutes to measure nothing of the machine."""
    return list(PRECISIONS) if device.type != "cpu" or cpu_has_fast_bf16() else ["fp32"]


def ceilings(device: torch.device, repeats: int) -> dict:
    """Per precision: the matmul's and the convolution's GFLOP/s, and the ceiling, the faster of the two."""
    out = {}
    for name in measured_precisions(device):
        dtype = PRECISIONS[name]
        kinds = {
            "matmul": summary(matmul_rate(device, repeats, dtype)),
            "conv": summary(conv_rate(device, repeats, dtype)),
        }
        out[name] = {**kinds, "ceiling": max(kinds.values(), key=lambda s: s["median"])}
    return out


def merged(before: dict, after: dict) -> dict:
    """The ceilings over a row's minutes: the values measured before and after it, together."""
    return {p: {k: summary(before[p][k]["values"] + after[p][k]["values"]) for k in before[p]} for p in before}


# --------------------------------------------------------------------------- the naive baseline


class NaiveVAE(nn.Module):
    """The notebook's network written plainly: NCHW, three conv heads, a Python loop over components."""

    def __init__(self, k: int, d: int = LATENT) -> None:
        super().__init__()
        self.k, self.d = k, d

        def down(i, o):
            return [nn.Conv2d(i, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), nn.LeakyReLU(0.2)]

        def up(i, o, kernel, stride, pad):
            return [nn.ConvTranspose2d(i, o, kernel, stride, pad, bias=False), nn.BatchNorm2d(o), nn.LeakyReLU(0.2)]

        self.enc = nn.Sequential(*down(1, 32), *down(32, 64), *down(64, 128), *down(128, 256))
        self.mu, self.logvar, self.logits = nn.Conv2d(256, k * d, 2), nn.Conv2d(256, k * d, 2), nn.Conv2d(256, k, 2)
        self.dec = nn.Sequential(
            *up(d, 256, 4, 1, 0),
            *up(256, 128, 4, 2, 1),
            *up(128, 64, 4, 2, 1),
            *up(64, 32, 4, 2, 1),
            nn.ConvTranspose2d(32, 1, 1),
        )

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        mu = self.mu(h).view(-1, self.k, self.d)
        logvar = self.logvar(h).view(-1, self.k, self.d).clamp(-8, 8)
        w = torch.softmax(self.logits(h).view(-1, self.k), -1)
        sd = torch.exp(0.5 * logvar)
        target = x[:, :, 2:-2, 2:-2]
        if self.k == 1:
            z = mu[:, 0] + sd[:, 0] * torch.randn_like(mu[:, 0])
            logits = self.dec(z[:, :, None, None])[:, :, 2:-2, 2:-2]
            recon = -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum((1, 2, 3))
            kl = 0.5 * (sd[:, 0] ** 2 + mu[:, 0] ** 2 - 1 - 2 * torch.log(sd[:, 0])).sum(1)
            return -(recon - kl).mean()
        total = 0.0
        for j in range(self.k):  # one decoder call per component
            z = mu[:, j] + sd[:, j] * torch.randn_like(mu[:, j])
            logits = self.dec(z[:, :, None, None])[:, :, 2:-2, 2:-2]
            recon = -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum((1, 2, 3))
            comp = -0.5 * (((z[:, None] - mu) / sd) ** 2 + math.log(2 * math.pi)).sum(-1) - torch.log(sd).sum(-1)
            log_q = torch.logsumexp(torch.log(w) + comp, -1)
            log_p = -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)
            total = total + w[:, j] * (recon - log_q + log_p)
        return -total.mean()


def naive_training(
    images: torch.Tensor, k: int, steps: int, repeats: int, device: torch.device, precision: str = "fp32"
) -> dict:
    torch.manual_seed(0)
    model = NaiveVAE(k).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    cast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        idx = torch.randint(0, len(images), (BATCH,), device=device)
        x = torch.bernoulli(images[idx].float() / 255)
        with cast:
            loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    flops = count_flops(step) / BATCH
    rates = [steps * BATCH / timed(lambda: [step() for _ in range(steps)], device) for _ in range(repeats)]
    return {"images_per_s": summary(rates), "flop_per_image": flops}


# --------------------------------------------------------------------------- vaekit's own training


def vaekit_training(
    data,
    k: int,
    batches: int,
    repeats: int,
    device: torch.device,
    estimator: str = "marginal",
    network: dict = SAME_NETWORK,
    precision: str = "fp32",
    compile: bool = False,
) -> dict:
    """vaekit.training.loop.train for 1 + repeats epochs of `batches` batches; epoch 1 is the warm-up
    (and, with `compile`, the compiling)."""
    config = RunConfig(
        ModelConfig(latent_size=LATENT, components=k, image_size=data.image_size, channels=data.channels, **network),
        DataConfig(dataset=data.name, train_subset=batches * BATCH),
        TrainConfig(
            epochs=1 + repeats,
            batch_size=BATCH,
            device=device.type,
            mixture_estimator=estimator,
            precision=precision,
            compile=compile,
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        run = train(config, out=Path(tmp) / "run", data=data, progress=False)
        wall = time.perf_counter() - started
        rows = read_metrics(run)
    rates = [float(r["images_per_s"]) for r in rows[1:]]

    # FLOPs of one step, counted on the same calls the loop makes (in fp32: autocast moves no FLOPs).
    model = VAE(replace(config.model)).to(device)
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    model = training_networks(model.to(memory_format=memory_format), device)
    images = data.train.images[: batches * BATCH].to(device)
    index = torch.arange(BATCH, device=device)

    def step():
        x = make_batch(images, index, True, memory_format)
        loss = training_loss(model(x, estimator=estimator))
        loss.backward()

    flops = count_flops(step) / BATCH

    # The data handling share: make_batch alone against the median step.
    for _ in range(3):
        make_batch(images, index, True, memory_format)
    batch_s = statistics.median(
        timed(lambda: make_batch(images, index, True, memory_format), device) for _ in range(20)
    )
    step_s = BATCH / statistics.median(rates)

    # The per-step finite checks and gradient norm against the step: what training.training_step records on
    # the device, and the settling (the host sync; every step on a CPU, every CUDA_CHECK_EVERY on a GPU).
    model.zero_grad()
    step()
    ctx, every = DistContext(), check_every(device, False)
    step_checks = StepChecks(every, device)
    terms = model(make_batch(images, index, True, memory_format), estimator=estimator)

    def checks():
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
        step_checks.record(1, non_finite_flags(terms, norm))
        return step_checks.settle([False, False], ctx) if every == 1 else None

    checks()
    checks_s = statistics.median(timed(checks, device) for _ in range(20))
    return {
        "images_per_s": summary(rates),
        "flop_per_image": flops,
        "epochs_wall_s": wall,
        "make_batch_s": batch_s,
        "step_s": step_s,
        "data_share": batch_s / step_s,
        "checks_s": checks_s,
        "checks_share": checks_s / step_s,
    }


# --------------------------------------------------------------------------- inference and NLL


def trained_model(data, device: torch.device) -> VAE:
    """A K=1 model with BatchNorm statistics from a few batches (values matter only for checks)."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_size=LATENT, image_size=data.image_size, channels=data.channels, **SAME_NETWORK)).to(
        device
    )
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(
                make_batch(data.train.images.to(device), torch.arange(i * BATCH, (i + 1) * BATCH, device=device), True)
            )
    return model.eval()


def inference(model, x: torch.Tensor, repeats: int, device: torch.device, compile: bool) -> dict:
    def encdec(m):
        return lambda: m.decode(m.encode(x).mean).logits

    variants = {"plain eval": model, "folded+channels_last": inference_model(model)}
    compile_s = None
    if compile:
        compiled = inference_model(model, compile=True)
        with torch.inference_mode():
            compile_s = warm_up(encdec(compiled))
        variants["folded+channels_last+compile"] = compiled
    with torch.inference_mode():
        flops = count_flops(encdec(model)) / len(x)
        ref = encdec(model)()
        out = {}
        for name, m in variants.items():
            encdec(m)()
            err = (encdec(m)() - ref).abs().max().item()
            rates = [len(x) / timed(encdec(m), device) for _ in range(repeats)]
            out[name] = {"images_per_s": summary(rates), "flop_per_image": flops, "max_abs_diff": err}
    if compile_s is not None:
        out["folded+channels_last+compile"]["compile_s"] = compile_s
    return out


def nll(model, x: torch.Tensor, samples: int, repeats: int, device: torch.device) -> dict:
    fast = inference_model(model)
    out = {}
    with torch.inference_mode():
        # On one thread: FlopCounterMode does not see the work of decoded_log_prob's worker threads.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        flops = count_flops(lambda: log_likelihood_estimate(model, x, samples)) / (len(x) * samples)
        torch.set_num_threads(threads)
        for name, m in (("plain eval", model), ("folded+channels_last", fast)):
            log_likelihood_estimate(m, x, samples)
            rates = [
                len(x) * samples / timed(lambda: log_likelihood_estimate(m, x, samples), device) for _ in range(repeats)
            ]
            out[name] = {"samples_per_s": summary(rates), "flop_per_sample": flops}
    return out


# --------------------------------------------------------------------------- main

ROWS: dict[str, dict] = {
    "naive K=1": dict(kind="naive", k=1),
    "naive K=1 bf16": dict(kind="naive", k=1, precision="bf16"),
    "vaekit K=1": dict(kind="vaekit", k=1),
    "vaekit K=1 bf16": dict(kind="vaekit", k=1, precision="bf16"),
    "naive K=5": dict(kind="naive", k=5),
    "vaekit K=5": dict(kind="vaekit", k=5),
    "vaekit K=5 pathwise": dict(kind="vaekit", k=5, estimator="pathwise"),
    "vaekit K=20 pathwise": dict(kind="vaekit", k=20, estimator="pathwise"),
    "default K=1": dict(kind="vaekit", k=1, network=DEFAULT_NETWORK),
    "default K=1 bf16": dict(kind="vaekit", k=1, network=DEFAULT_NETWORK, precision="bf16"),
    "default K=1 compile": dict(kind="vaekit", k=1, network=DEFAULT_NETWORK, compile=True),
    "default K=1 bf16 compile": dict(kind="vaekit", k=1, network=DEFAULT_NETWORK, precision="bf16", compile=True),
    "default L=2": dict(kind="vaekit", k=1, network={**DEFAULT_NETWORK, "levels": 2}),
    "default L=2 bf16": dict(kind="vaekit", k=1, network={**DEFAULT_NETWORK, "levels": 2}, precision="bf16"),
    "default L=3 bf16": dict(kind="vaekit", k=1, network={**DEFAULT_NETWORK, "levels": 3}, precision="bf16"),
    "inference": dict(kind="inference"),
}


def measure_row(row: str, args: argparse.Namespace) -> dict:
    """One row of the table, measured in this (fresh) process."""
    device = torch.device(args.device)
    set_threads(args.threads)
    big = device.type == "cuda"
    steps = {1: 2, 5: 2} if args.quick else {1: 12, 5: 4}  # naive steps per repeat: about 2-4 s each
    # An epoch of a few seconds, so its first step does not dominate; pathwise rows cost about a K=1 step.
    batches = {1: 3 if args.quick else 24, 5: 2 if args.quick else 8, 20: 3 if args.quick else 24}
    if big:
        batches = {1: 50, 5: 20, 20: 50}
        steps = {1: 20, 5: 20}
    data = load_dataset("fashion-mnist")
    # Small validation and test sets: the per-epoch validation and pictures stay cheap (and untimed).
    data = replace(data, val=ImageSet(data.val.images[:256]), test=ImageSet(data.test.images[:2048]))
    # The ceilings right before and after the row: a shared machine's speed drifts by tens of
    # percent within minutes, so each row is set against the ceilings of its own minutes.
    before = ceilings(device, args.repeats)
    spec = ROWS[row]
    precision = spec.get("precision", "fp32")
    if spec["kind"] == "inference":
        samples = 20 if args.quick else 100
        model = trained_model(data, device)
        x_eval = binarize_fixed(data.test.images[: 1024 if not big else 2048].to(device), 0)
        out = {
            "inference": inference(model, x_eval, args.repeats, device, args.compile),
            "nll": {**nll(model, x_eval[:256], samples, args.repeats, device), "samples": samples},
        }
    elif spec["kind"] == "naive":
        out = naive_training(data.train.images.to(device), spec["k"], steps[spec["k"]], args.repeats, device, precision)
    else:
        k, estimator = spec["k"], spec.get("estimator", "marginal")
        network, compile = spec.get("network", SAME_NETWORK), spec.get("compile", False)
        out = vaekit_training(data, k, batches[k], args.repeats, device, estimator, network, precision, compile)
    out["precision"] = precision
    out["ceilings"] = merged(before, ceilings(device, args.repeats))
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_row_in_child(row: str, args: argparse.Namespace) -> dict:
    """Each row in its own process: earlier rows' allocator and thread-pool state cannot slow it."""
    cmd = [sys.executable, __file__, "--row", row, "--repeats", str(args.repeats), "--device", args.device]
    cmd += (
        ["--quick"] * args.quick
        + ["--compile"] * args.compile
        + (["--threads", str(args.threads)] if args.threads else [])
    )
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="fewer steps and samples: a smoke run")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    p.add_argument(
        "--compile", action="store_true", help="also time torch.compile for inference (pays the compile time)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--row", choices=list(ROWS), help=argparse.SUPPRESS)  # internal: measure one row, print its JSON
    p.add_argument(
        "--only", nargs="+", choices=list(ROWS), metavar="ROW", help=f"measure only these rows, of: {', '.join(ROWS)}"
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    args = p.parse_args(argv)
    if args.row:
        print(json.dumps(measure_row(args.row, args)))
        return 0
    device = torch.device(args.device)
    threads = set_threads(args.threads)
    started = time.perf_counter()
    results: dict = {
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "vaekit": vaekit.__version__,
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": threads,
            "device": str(device),
            "quick": args.quick,
            "repeats": args.repeats,
            "rows": "each in its own child process, one after another",
        }
    }
    results["ceilings"] = ceilings(device, args.repeats)
    results["training"] = {}
    peak_cuda = []
    rows = [row for row in args.only or ROWS if ROWS[row].get("precision", "fp32") in measured_precisions(device)]
    if skipped := [row for row in args.only or ROWS if row not in rows]:
        results["skipped"] = {"rows": skipped, "why": "this CPU has no bf16 units: bf16 is emulated"}
        print(f"skipped (this CPU has no bf16 units, so bf16 is emulated): {', '.join(skipped)}", file=sys.stderr)
    for row in rows:
        print(f"{row} ...", file=sys.stderr)
        measured = run_row_in_child(row, args)
        peak_cuda.append(measured.pop("peak_cuda_mib", 0.0))
        if row == "inference":
            row_ceilings = measured.pop("ceilings")
            measured.pop("precision")
            for part in ("inference", "nll"):
                for variant in measured[part].values():
                    if isinstance(variant, dict):
                        variant["ceilings"], variant["precision"] = row_ceilings, "fp32"
            results.update(measured)
        else:
            results["training"][row] = measured
    # The ceiling again after the rows: a machine that slowed down meanwhile shows here.
    results["ceilings_after"] = ceilings(device, args.repeats)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child
    if device.type == "cuda":
        results["peak_cuda_mib"] = max(peak_cuda)
    results["wall_s"] = time.perf_counter() - started

    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def print_table(r: dict) -> None:
    print(
        f"\nvaekit throughput: torch {r['machine']['torch']}, {r['machine']['threads']} threads, "
        f"{r['machine']['device']}, median [min-max] of {r['machine']['repeats']} repeats; each row's share is of "
        "the ceiling of its precision, measured around it"
    )
    for key, when in (("ceilings", "before the rows"), ("ceilings_after", "after the rows")):
        for precision, c in r.get(key, {}).items():
            parts = "  ".join(
                f"{kind} {c[kind]['median']:.0f} [{c[kind]['min']:.0f}-{c[kind]['max']:.0f}]"
                for kind in ("matmul", "conv")
            )
            print(f"{precision} ceiling {when}: {c['ceiling']['median']:.0f} GFLOP/s  ({parts})")
    print(f"{'row':40s} {'rate':>22s} {'unit':>10s} {'MFLOP/unit':>10s} {'GFLOP/s':>8s} {'ceiling':>12s} {'of it':>6s}")

    def gflops(t: dict, unit: str) -> float:
        return t[unit]["median"] * t["flop_per_" + ("image" if unit == "images_per_s" else "sample")] / 1e9

    def share(t: dict, unit: str = "images_per_s") -> float:
        return gflops(t, unit) / t["ceilings"][t["precision"]]["ceiling"]["median"]

    def row(name: str, t: dict, unit: str) -> None:
        s, ceiling = t[unit], t["ceilings"][t["precision"]]["ceiling"]["median"]
        flop = t["flop_per_" + ("image" if unit == "images_per_s" else "sample")]
        rate = f"{s['median']:.0f} [{s['min']:.0f}-{s['max']:.0f}]"
        label = "img/s" if unit == "images_per_s" else "samples/s"
        print(
            f"{name:40s} {rate:>22s} {label:>10s} {flop / 1e6:10.1f} {gflops(t, unit):8.1f} "
            f"{t['precision'] + ' ' + format(ceiling, '.0f'):>12s} {share(t, unit):6.0%}"
        )

    training = r["training"]
    for name, t in training.items():
        row(f"train {name}", t, "images_per_s")
    for k in (1, 5):
        v, n = training.get(f"vaekit K={k}"), training.get(f"naive K={k}")
        if v and n:
            print(
                f"  vaekit K={k}: {v['images_per_s']['median'] / n['images_per_s']['median']:.2f}x naive "
                f"({share(v) / share(n):.2f}x in shares of each row's ceiling); "
                f"make_batch {v['make_batch_s'] * 1e3:.2f} ms = {v['data_share']:.1%} of a step; "
                f"finite checks + grad norm {v['checks_s'] * 1e3:.2f} ms = {v['checks_share']:.1%}"
            )
    base = training.get("vaekit K=1")
    for name in ("vaekit K=5", "vaekit K=5 pathwise", "vaekit K=20 pathwise"):
        if base and name in training:
            t = training[name]
            print(
                f"  {name}: a step costs {base['images_per_s']['median'] / t['images_per_s']['median']:.2f}x a K=1 step"
            )
    for fast, slow in (
        ("naive K=1 bf16", "naive K=1"),
        ("vaekit K=1 bf16", "vaekit K=1"),
        ("default K=1 bf16", "default K=1"),
        ("default K=1 compile", "default K=1"),
        ("default K=1 bf16 compile", "default K=1"),
        ("default K=1", "default L=2"),
        ("default K=1 bf16", "default L=2 bf16"),
        ("default K=1 bf16", "default L=3 bf16"),
    ):
        if fast in training and slow in training:
            ratio = training[fast]["images_per_s"]["median"] / training[slow]["images_per_s"]["median"]
            print(f"  {fast}: {ratio:.2f}x the images/s of {slow}")
    for name, t in r.get("inference", {}).items():
        row(f"encode+decode {name}", t, "images_per_s")
        if "compile_s" in t:
            print(f"  (compile {t['compile_s']:.0f} s)")
    for name, t in r.get("nll", {}).items():
        if isinstance(t, dict):
            row(f"NLL S={r['nll']['samples']} {name}", t, "samples_per_s")
    print(f"peak resident memory {r['peak_rss_mib']:.0f} MiB; wall {r['wall_s']:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
