"""How much could a mixture posterior gain at all? Inference gaps of trained models, per image.

    python benchmarks/posterior_gap.py RUN [RUN ...] [--images 500] [--steps 300] [--components 5] [--device cuda]

For each run's decoder and prior, on the first --images test images (binarised with the
evaluation seed), four numbers per image (Cremer, Li & Duvenaud 2018, "Inference suboptimality
in variational autoencoders"):
    log p(x)        importance sampling with the run's encoder as proposal (--nll-samples)
    ELBO encoder    the ELBO of the run's own q(z|x) (the amortised posterior)
    ELBO Gaussian   the ELBO of a diagonal Gaussian fitted to that image alone
    ELBO mixture    the ELBO of a --components mixture of diagonal Gaussians fitted to that image alone
The Gaussian starts from the encoder's (its heaviest component), the mixture from the fitted
Gaussian copied K times and jittered apart; both are fitted by Adam on the reparameterised
ELBO (the mixture's taken per component: sum_k w_k E_{q_k}[log p(x, z) - log q(z)]).
log p(x) - ELBO Gaussian is the gap no Gaussian posterior can close for this decoder;
ELBO mixture - ELBO Gaussian is what K components add to it (at least that much: a longer fit
could find more). Differences are paired over the same images.
Prints a table and writes benchmarks/results/posterior_gap.json. A GPU makes it take a minute.

For a hierarchy (--levels L >= 2) the posteriors fitted are the top group's, q(z_L | x), given
the trained decoder and the lower levels: log p(x, z_L) is replaced by its bound with the model's
own lower posteriors, log p(x | z) - sum_l KL(q(z_l | z_>l, x) || p(z_l | z_>l)) + log p(z_L),
one draw of the lower groups per draw of z_L (log p(x) is the full importance-sampled estimate).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from vaekit.data.batching import binarize_fixed
from vaekit.distributions.mixture import MixtureOfGaussians
from vaekit.evaluation.evaluate import EVAL_BINARIZE_SEED
from vaekit.models.speed import inference_model
from vaekit.objectives.bounds import log_likelihood_estimate
from vaekit.runs.run_dir import load_run, load_run_data


def log_joint(model, x: torch.Tensor, z: torch.Tensor, chunk: int) -> torch.Tensor:
    """log p(x, z) for draws z (..., B, D) of the images x (B, ...), decoded `chunk` images at a time
    (for a hierarchy, z is the top group and log p(x, z) its bound through the lower posteriors)."""
    shape = z.shape[:-1]
    flat = z.reshape(-1, shape[-1], z.shape[-1])  # (N, B, D)
    per = max(1, chunk // flat.shape[1])
    context = model.encode_with_context(x)[1] if model.levels > 1 else []
    parts = []
    for i in range(0, len(flat), per):
        piece = flat[i : i + per]  # (n, B, D)
        if context:
            repeated = [c.repeat(len(piece), 1, 1, 1) for c in context]  # (n*B, ...) in piece's order
            px, lower = model.decode_groups(piece, repeated)  # lower: (n, B, L-1, 3)
            log_px = px.log_prob(model.crop(x)) - lower[..., 0].sum(-1)
        else:
            log_px = model.decode(piece).log_prob(model.crop(x))
        parts.append(log_px + model.prior().log_prob(piece))
    return torch.cat(parts).reshape(shape)


def mixture_elbo(model, x, loc, log_scale, logits, samples: int, chunk: int) -> torch.Tensor:
    """sum_k w_k E_{z ~ q_k}[log p(x, z) - log q(z)], with `samples` draws per component (B,)."""
    eps = torch.randn((samples, *loc.shape), device=loc.device, dtype=loc.dtype)  # (S, B, K, D)
    z = (loc + log_scale.exp() * eps).transpose(1, 2)  # (S, K, B, D): each component's draws
    value = log_joint(model, x, z, chunk) - MixtureOfGaussians(loc, log_scale.exp(), logits).log_prob(z)  # (S, K, B)
    return (torch.softmax(logits, -1) * value.mean(0).T).sum(-1)


def fit(model, x, loc, log_scale, logits, steps: int, samples: int, lr: float, chunk: int, learn_weights: bool):
    params = [loc.clone().requires_grad_(), log_scale.clone().requires_grad_()]
    logits = logits.clone().requires_grad_(learn_weights)
    opt = torch.optim.Adam(params + ([logits] if learn_weights else []), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        (-mixture_elbo(model, x, *params, logits, samples, chunk).sum()).backward()
        opt.step()
    return params[0].detach(), params[1].detach(), logits.detach()


def paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a - b).double()
    return {"mean": float(d.mean()), "stderr": float(d.std() / math.sqrt(len(d)))}


def measure(run_path: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    run = load_run(run_path, "latest", device=device)
    model = inference_model(run.model).requires_grad_(False)
    data = load_run_data(run.config)
    x = binarize_fixed(data.test.images[: args.images].to(device), EVAL_BINARIZE_SEED)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    with torch.no_grad():
        q = model.encode(x)
        log_px = log_likelihood_estimate(model, x, args.nll_samples, args.chunk)
        loc, log_scale, logits = q.loc, q.scale.log(), q.logits
        encoder_elbo = mixture_elbo(model, x, loc, log_scale, logits, args.eval_samples, args.chunk)
    top = logits.argmax(-1)[:, None, None].expand(-1, 1, loc.shape[-1])
    g_loc, g_log_scale = loc.gather(1, top), log_scale.gather(1, top)  # (B, 1, D)
    one = torch.zeros(len(x), 1, device=device)
    gauss = fit(model, x, g_loc, g_log_scale, one, args.steps, args.samples, args.lr, args.chunk, False)
    # The fitted Gaussian, copied K times and jittered apart by 0.3 of its scale, equal weights:
    # the mixture starts where the Gaussian ended, so what it adds is what fitting further finds.
    k = args.components
    jitter = 0.3 * torch.randn(len(x), k, loc.shape[-1], device=device)
    start = (gauss[0] + gauss[1].exp() * jitter, gauss[1].expand(-1, k, -1), torch.zeros(len(x), k, device=device))
    mix = fit(model, x, *start, args.steps, args.samples, args.lr, args.chunk, True)
    with torch.no_grad():
        gauss_elbo = mixture_elbo(model, x, *gauss, args.eval_samples, args.chunk)
        mix_elbo = mixture_elbo(model, x, *mix, args.eval_samples // k, args.chunk)
        weights = torch.softmax(mix[2], -1)
        entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1)
    return {
        "run": run_path,
        "images": len(x),
        "seconds": time.perf_counter() - started,
        "log_px": float(log_px.mean()),
        "elbo_encoder": float(encoder_elbo.mean()),
        "elbo_gaussian": float(gauss_elbo.mean()),
        "elbo_mixture": float(mix_elbo.mean()),
        "log_px_minus_elbo_encoder": paired(log_px, encoder_elbo),
        "log_px_minus_elbo_gaussian": paired(log_px, gauss_elbo),
        "elbo_mixture_minus_gaussian": paired(mix_elbo, gauss_elbo),
        "fitted_mixture_effective_components": float(entropy.exp().mean()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders or zoo:NAME")
    p.add_argument("--images", type=int, default=500, help="first N test images (default 500)")
    p.add_argument("--steps", type=int, default=300, help="Adam steps per fitted posterior (default 300)")
    p.add_argument("--samples", type=int, default=16, help="draws per component per step (default 16)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--components", type=int, default=5, help="K of the fitted mixture (default 5)")
    p.add_argument("--eval-samples", type=int, default=1000, help="draws for each final ELBO (default 1000)")
    p.add_argument("--nll-samples", type=int, default=5000, help="importance samples for log p(x) (default 5000)")
    p.add_argument("--chunk", type=int, default=65536, help="decoded images per decoder call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "posterior_gap.json"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.runs:  # written after each run, so a run that is stopped keeps what it measured
        rows.append(measure(run, args))
        out.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"\nfirst {args.images} test images; {args.steps} Adam steps of {args.samples} draws per component")
    columns = ("log p(x)", "encoder", "Gaussian", "mixture")
    print(f"{'run':28} " + " ".join(f"{c:>9}" for c in columns) + f"  {'gap: Gaussian':>15}  {'mix - Gauss':>15}")
    for r in rows:
        g, m = r["log_px_minus_elbo_gaussian"], r["elbo_mixture_minus_gaussian"]
        print(
            f"{r['run'][-28:]:28} {r['log_px']:9.2f} {r['elbo_encoder']:9.2f} {r['elbo_gaussian']:9.2f} "
            f"{r['elbo_mixture']:9.2f}  {g['mean']:7.3f}±{g['stderr']:.3f}  {m['mean']:7.3f}±{m['stderr']:.3f}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
