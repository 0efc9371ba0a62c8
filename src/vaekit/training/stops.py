"""Why training stops early: SIGINT/SIGTERM, the time budget, or a number that is not finite.

A GPU step never waits for the host: a step's non-finite flags stay on the device, its update
is skipped there (fused Adam's `found_inf`), and every `every` steps one all-reduce settles the
flags, the signal and the budget together, so all ranks stop at the same step.
"""

from __future__ import annotations

import enum
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaekit.config import TrainConfig
from vaekit.errors import VaekitError
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import Terms
from vaekit.runs.checkpoint import has_checkpoint, resolve_pointer
from vaekit.training.distributed import DistContext

CUDA_CHECK_EVERY = 25  # steps between host syncs on a GPU; on a CPU a sync is free and every step is checked


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written. exit_code is 130 or 143."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Stop(enum.Enum):
    """Why training stopped before its last epoch: a signal (SIGINT/SIGTERM) or the time budget."""

    SIGNAL = "signal"
    BUDGET = "budget"


def check_every(device: torch.device, detect_anomaly: bool) -> int:
    """Steps between the host syncs that settle the checks (anomaly detection needs every step)."""
    return 1 if device.type != "cuda" or detect_anomaly else CUDA_CHECK_EVERY


def non_finite_flags(terms: Terms, grad_norm: torch.Tensor) -> torch.Tensor:
    """(3,) float on the device: 1 where the reconstruction, the KL or the gradient is not finite."""
    flags = [~torch.isfinite(terms.recon).all(), ~torch.isfinite(terms.kl).all(), ~torch.isfinite(grad_norm)]
    return torch.stack(flags).float()


@dataclass
class Settled:
    """What one settling found, the same on every rank."""

    bad_step: int | None  # the first step with a non-finite number
    bad_recon: bool
    bad_kl: bool
    stops: list[bool]  # the stop flags passed in, each true if it was on any rank


class StepChecks:
    """Each step's non-finite flags, kept on the device until `settle` brings them to the host.

    `record` keeps the first bad step and which terms; `settle` is the one host sync: a single
    all-reduce of every rank's flags. A step found bad was already skipped by the optimizer.
    """

    def __init__(self, every: int, device: torch.device) -> None:
        self.every = every
        # step; recon, kl, gradient bad
        self.first_bad = torch.tensor([-1.0, 0.0, 0.0, 0.0], dtype=torch.float64, device=device)
        self.anomaly: str | None = None  # what --detect-anomaly named (host side: it came from an exception)

    def record(self, step: int, bad: torch.Tensor, anomaly: str | None = None) -> None:
        """Notes step `step`'s non-finite flags `bad` (3,) on the device, keeping the first bad step;
        no host sync.
        """
        self.anomaly = self.anomaly or anomaly
        first = (self.first_bad[0] < 0) & (bad.amax() > 0)
        at = torch.full((1,), float(step), dtype=torch.float64, device=bad.device)
        self.first_bad = torch.where(first, torch.cat([at, bad.double()]), self.first_bad)

    def settle(self, stop_flags: list[bool], ctx: DistContext) -> Settled:
        """The one host sync: the first bad step and its terms, and `stop_flags`, each true if it is on
        any rank.
        """
        flags = [self.first_bad[0] >= 0, *self.first_bad[1:], *stop_flags]
        any_bad, recon, kl, _, *stops = ctx.any_of(flags, self.first_bad.device)
        return Settled(int(self.first_bad[0].item()) if any_bad else None, recon, kl, stops)


class Stops:
    """Owns every reason to stop early; `check` settles them all in one host sync."""

    def __init__(
        self, model: VAE, settings: TrainConfig, ctx: DistContext, run_dir: Path, device: torch.device
    ) -> None:
        self.model, self.settings, self.ctx, self.run_dir = model, settings, ctx, run_dir
        self.checks = StepChecks(check_every(device, settings.detect_anomaly), device)
        self.signals = _SignalFlag()
        self.started = time.perf_counter()  # max_minutes counts from here (this process's start or resume)

    @property
    def every(self) -> int:
        """Steps between the host syncs that settle the checks: 1 unless on CUDA without --detect-anomaly."""
        return self.checks.every

    def __enter__(self) -> Stops:
        self.signals.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.signals.__exit__()

    def record(self, step: int, bad: torch.Tensor, anomaly: str | None) -> None:
        """Notes a step's non-finite flags (and the operation --detect-anomaly named) for the next `check`."""
        self.checks.record(step, bad, anomaly)

    def due(self, position: int, batches: int) -> bool:
        """Whether batch `position` of `batches` ends a settling interval (the epoch's last always does)."""
        return position % self.every == 0 or position == batches

    def check(self, step: int, x: torch.Tensor) -> Stop | None:
        """Raises the error for a non-finite step; else why to stop, if at all. x is step `step`'s batch."""
        budget = self.settings.max_minutes
        out_of_time = budget is not None and time.perf_counter() - self.started > 60 * budget
        settled = self.checks.settle([self.signals.signum is not None, out_of_time], self.ctx)
        if settled.bad_step is not None:
            # On a GPU the bad step may lie some steps back; its batch is gone by now.
            raise self._non_finite(settled, x if settled.bad_step == step else None)
        interrupted, out_of_time = settled.stops
        return Stop.SIGNAL if interrupted else Stop.BUDGET if out_of_time else None

    def interrupted(self, step: int) -> TrainingInterrupted:
        """The `TrainingInterrupted` to raise after a signal: exit code 130 for SIGINT, 143 for SIGTERM,
        with the message saying how to resume.
        """
        code = 143 if self.signals.signum == signal.SIGTERM else 130  # 128 + the signal, as shells report it
        return TrainingInterrupted(
            code,
            f"vaekit: interrupted after step {step}; checkpoint saved; "
            f"continue with `vaekit train --resume {self.run_dir}`",
        )

    def _non_finite(self, settled: Settled, x: torch.Tensor | None) -> VaekitError:
        """The one-line error for a NaN/inf, naming the step and the term (reconstruction or KL);
        a gradient-only fault is traced to a term while its batch is at hand."""
        bad_recon, bad_kl = settled.bad_recon, settled.bad_kl
        what = "loss" if bad_recon or bad_kl else "gradient"
        if what == "gradient" and x is not None:
            bad_recon, bad_kl = self._blame_gradient(x)
        term = " and ".join(name for name, bad in (("reconstruction", bad_recon), ("KL", bad_kl)) if bad)
        if has_checkpoint(self.run_dir):
            latest = resolve_pointer(self.run_dir / "checkpoints", "latest").name
            kept = f"the last good checkpoint ({latest}) is kept in {self.run_dir}"
        else:
            kept = "no checkpoint had been written yet"
        detail = f" ({self.checks.anomaly})" if self.checks.anomaly else ""
        return VaekitError(
            f"non-finite {what} at step {settled.bad_step}{f' in the {term} term' if term else ''}{detail}; {kept}; "
            "try a lower --lr or --grad-clip 1.0, and --detect-anomaly to find the operation"
        )

    def _blame_gradient(self, x: torch.Tensor) -> list[bool]:
        """The loss was finite but a gradient was not: runs the forward again and differentiates
        each term alone (autograd.grad, so DDP's gradient hooks stay out of it)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        with torch.autograd.set_detect_anomaly(False):
            terms = self.model(x, iw_samples=self.settings.iw_samples, estimator=self.settings.mixture_estimator)
            flags = []
            for term in (-terms.recon.mean(), terms.kl.mean()):
                grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
                flags.append(any(g is not None and not torch.isfinite(g).all() for g in grads))
        return self.ctx.any_of(flags, x.device)


class _SignalFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a step is never cut in half."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _SignalFlag:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
