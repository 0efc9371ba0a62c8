"""Gradient variance of the mixture estimators, and MixtureOfGaussians.rsample against Pyro's.

    python benchmarks/mixture_gradients.py                       # a fresh K=5 model (initialisation)
    python benchmarks/mixture_gradients.py --run runs/k5-epoch1  # a trained run's latest weights
    python benchmarks/mixture_gradients.py --rsample-only        # just the rsample table

Part 1: on one fixed batch of binarised Fashion-MNIST training images, `--draws` gradients of the
training loss per estimator (only the noise differs), split into three parameter groups: the
encoder without its mixture-weight head, that head (the logits), and the decoder. For each
group: the squared norm of the mean gradient (the signal), the trace of the gradient covariance
(the noise: the mean squared distance of a draw from the mean), and the seconds per gradient.
Both estimators are unbiased for the same ELBO gradient, so the means must agree within noise
(the `bias z` column: the largest |difference| / standard error over the group's coordinates,
summarised as the 99th percentile).

Part 2: rsample + backward of a (B=128, K=5, D=32) mixture, ours against
pyro.distributions.MixtureOfDiagNormals (when `pip install pyro-ppl` has been run): time, and
whether the draws and gradients are finite for a component at weight 1e-8, scales 1e-3 and 1e3,
and components 50 standard deviations apart. Writes benchmarks/results/mixture_gradients.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from vaekit.config import ModelConfig
from vaekit.data import load_dataset
from vaekit.data.batching import binarize_fixed
from vaekit.distributions.mixture import MixtureOfGaussians
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import training_loss
from vaekit.runs.run_dir import load_run

GROUPS = ("encoder", "mixture logits", "decoder")


def parameter_groups(model: VAE) -> dict[str, list[torch.nn.Parameter]]:
    head = set(map(id, model.encoder.logits_head.parameters()))
    return {
        "encoder": [p for p in model.encoder.parameters() if id(p) not in head],
        "mixture logits": list(model.encoder.logits_head.parameters()),
        "decoder": list(model.decoder.parameters()),
    }


def gradient_draws(
    model: VAE, x: torch.Tensor, estimator: str, draws: int, train_mode: bool = True
) -> tuple[dict[str, torch.Tensor], float]:
    """(draws, P) gradients per group, and seconds per gradient. In train mode, as training sees
    them, the decoder's BatchNorm normalises over B*K latents for `marginal` and B for `pathwise`,
    so the two estimate the gradients of slightly different functions; in eval mode the same."""
    groups = parameter_groups(model)
    out: dict[str, list[torch.Tensor]] = {g: [] for g in groups}
    model.train(train_mode)
    started = time.perf_counter()
    for r in range(draws):
        torch.manual_seed(r)
        model.zero_grad(set_to_none=True)
        training_loss(model(x, estimator=estimator)).backward()
        for g, params in groups.items():
            out[g].append(
                torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]).double()
            )
    seconds = (time.perf_counter() - started) / draws
    return {g: torch.stack(v) for g, v in out.items()}, seconds


def summarise(grads: torch.Tensor) -> dict[str, float]:
    mean = grads.mean(0)
    noise = float(((grads - mean) ** 2).sum(1).mean() * len(grads) / (len(grads) - 1))
    signal = float(mean.pow(2).sum())
    return {"signal": signal, "noise": noise, "noise_over_signal": noise / signal if signal > 0 else math.inf}


def bias_z(a: torch.Tensor, b: torch.Tensor) -> float:
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    ok = se > 0
    z = (a.mean(0) - b.mean(0)).abs()[ok] / se[ok]
    return float(torch.quantile(z, 0.99)) if z.numel() else 0.0


def estimator_table(model: VAE, x: torch.Tensor, draws: int, train_mode: bool) -> dict:
    table, grads = {}, {}
    for estimator in ("marginal", "pathwise"):
        grads[estimator], seconds = gradient_draws(model, x, estimator, draws, train_mode)
        table[estimator] = {"seconds_per_gradient": seconds, **{g: summarise(grads[estimator][g]) for g in GROUPS}}
    table["bias_z_p99"] = {g: bias_z(grads["marginal"][g], grads["pathwise"][g]) for g in GROUPS}
    with torch.no_grad():
        model.eval()
        w = model.encode(x).weights
        table["weights"] = {
            "mean": [round(float(v), 4) for v in w.mean(0)],
            "effective": math.exp(float(-(w.mean(0) * w.mean(0).log()).sum())),
        }
    return table


# --------------------------------------------------------------------------- rsample alone

CASES = ("ordinary", "tiny weight", "scale 1e-3", "scale 1e3", "50 sd apart")


def mixture_case(case: str, b: int = 128, k: int = 5, d: int = 32) -> list[torch.Tensor]:
    torch.manual_seed(0)
    loc, scale, logits = torch.randn(b, k, d), torch.full((b, k, d), 0.3), torch.zeros(b, k)
    if case == "tiny weight":
        logits[:, 0] = math.log(1e-8)
    elif case == "scale 1e-3":
        scale[:, ::2] = 1e-3
    elif case == "scale 1e3":
        scale[:, ::2] = 1e3
    elif case == "50 sd apart":
        loc = 50 * 0.3 * torch.arange(k, dtype=torch.float32)[None, :, None].expand(b, k, d).clone()
    return [p.requires_grad_() for p in (loc, scale, logits)]


def ours(loc, scale, logits):
    return MixtureOfGaussians(loc, scale, logits)


def pyro_mixture(loc, scale, logits):
    from pyro.distributions import MixtureOfDiagNormals

    return MixtureOfDiagNormals(loc, scale, logits)


def rsample_row(make, case: str, repeats: int) -> dict:
    params = mixture_case(case)
    f = lambda z: (z.pow(2).sum(-1) + 0.1 * z.sum(-1)).sum()  # noqa: E731
    times, finite = [], True
    for r in range(repeats):
        torch.manual_seed(r)
        started = time.perf_counter()
        z = make(*params).rsample()
        grads = torch.autograd.grad(f(z), params)
        times.append(time.perf_counter() - started)
        finite &= bool(torch.isfinite(z).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
        logits_grad_abs = float(grads[2].abs().max())
    return {"ms": 1e3 * statistics.median(times), "finite": finite, "max_abs_logits_grad": logits_grad_abs}


def rsample_table(repeats: int) -> dict:
    makers = {"vaekit": ours}
    try:
        import pyro  # noqa: F401

        makers["pyro MixtureOfDiagNormals"] = pyro_mixture
    except ImportError:
        print("pyro-ppl is not installed: its rows are left out (pip install pyro-ppl)", file=sys.stderr)
    return {name: {case: rsample_row(make, case, repeats) for case in CASES} for name, make in makers.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a run directory (its latest weights); default a fresh model")
    p.add_argument("--components", type=int, default=5)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--draws", type=int, default=30)
    p.add_argument("--rsample-only", action="store_true")
    p.add_argument(
        "--eval-mode",
        action="store_true",
        help="BatchNorm with running statistics: both estimators see the same function",
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "mixture_gradients.json"))
    args = p.parse_args(argv)
    result: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if not args.rsample_only:
        if args.run:
            model = load_run(args.run, which="latest").model
            result["model"] = f"{args.run} (latest)"
        else:
            torch.manual_seed(69420)
            # The network its table was measured on, whatever the defaults are now.
            model = VAE(ModelConfig(components=args.components, width=args.width, blocks="plain", prior="normal"))
            result["model"] = f"fresh K={args.components} width {args.width}"
        data = load_dataset("fashion-mnist")
        x = binarize_fixed(data.train.images[: args.batch], 0)
        result["estimators"] = estimator_table(model, x, args.draws, train_mode=not args.eval_mode)
        result["mode"] = "eval" if args.eval_mode else "train"
        result["draws"], result["batch"] = args.draws, args.batch
    result["rsample"] = rsample_table(20)
    print_tables(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def print_tables(r: dict) -> None:
    if "estimators" in r:
        e = r["estimators"]
        print(
            f"\ngradient noise on one batch of {r['batch']}, {r['draws']} draws, {r['model']}, {r['mode']} mode; "
            f"mean weights {e['weights']['mean']} ({e['weights']['effective']:.2f} effective)"
        )
        print(f"{'estimator':10s} {'group':15s} {'|mean|^2':>11s} {'tr cov':>11s} {'noise/signal':>13s} {'s/grad':>7s}")
        for est in ("marginal", "pathwise"):
            for g in GROUPS:
                s = e[est][g]
                print(
                    f"{est:10s} {g:15s} {s['signal']:11.4g} {s['noise']:11.4g} "
                    f"{s['noise_over_signal']:13.3g} {e[est]['seconds_per_gradient']:7.3f}"
                )
        print(
            "means agree (99th percentile of |difference| / standard error): "
            + ", ".join(f"{g} {z:.2f}" for g, z in e["bias_z_p99"].items())
        )
    print("\nrsample + backward, B=128 K=5 D=32 (median ms over 20; finite draws and gradients)")
    for name, cases in r["rsample"].items():
        print(
            f"  {name}: "
            + "; ".join(f"{c} {v['ms']:.2f} ms {'finite' if v['finite'] else 'NOT FINITE'}" for c, v in cases.items())
        )


if __name__ == "__main__":
    raise SystemExit(main())
