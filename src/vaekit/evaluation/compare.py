"""Paired comparisons of evaluated runs: the NLL difference image by image, on the same test images.

Two models scored on the same images share most of their per-image variation (hard images are
hard for both), so the standard error of the mean per-image difference is far smaller than
either mean's own standard error: this is what says whether one run is better than another.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaekit.errors import VaekitError
from vaekit.evaluation.per_image import PER_IMAGE_FILE, read_per_image
from vaekit.report.facts import protocol_text
from vaekit.runs.shipped import run_path

EVALUATION = "evaluation.json"
# evaluation.json settings that must agree for two runs' NLLs to be paired: (key, how a message names it)
PROTOCOL = (
    ("dataset_checksum", "dataset"),
    ("binarized", "binarised"),
    ("binarize_seed", "binarisation seed"),
    ("likelihood", "likelihood"),
    ("nll_samples", "importance samples S"),
)


@dataclass
class EvaluatedRun:
    """An evaluated run as a comparison reads it: its folder, evaluation.json's settings, and the
    per-image NLLs (nats) with the test images' positions they belong to.
    """

    path: Path
    settings: dict[str, Any]  # evaluation.json's
    index: np.ndarray  # the test images' positions in the test split
    nll: np.ndarray  # per image, nats


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """The mean and its standard error, sd / sqrt(n) with the n-1 sd (nan for one value)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def paired_difference(first: np.ndarray, other: np.ndarray) -> dict[str, float | int | None]:
    """mean(other - first) over the same images, the standard error of those per-image
    differences, and how many standard errors the mean is (None when the differences are all equal)."""
    first, other = np.asarray(first, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if first.shape != other.shape or first.ndim != 1:
        raise ValueError(f"paired values must be 1-D and equally long, got {first.shape} and {other.shape}")
    mean, stderr = mean_and_stderr(other - first)
    return {
        "mean": mean,
        "stderr": stderr,
        "standard_errors": mean / stderr if stderr > 0 else None,
        "images": int(first.size),
    }


def load_evaluated_run(run_dir: str | Path) -> EvaluatedRun:
    """A run's evaluation.json settings and per-image numbers; one-line VaekitErrors say what is missing."""
    run = run_path(run_dir)
    if not run.is_dir():
        raise VaekitError(f"run directory {run} does not exist; pass the folder `vaekit train --out` wrote")
    path = run / EVALUATION
    try:
        evaluation = json.loads(path.read_text())
    except FileNotFoundError:
        raise VaekitError(f"{run} has not been evaluated (no {EVALUATION}); run `vaekit evaluate {run}`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VaekitError(f"{path} is not valid JSON ({exc}); run `vaekit evaluate {run}` again") from None
    record = evaluation.get("per_image") if isinstance(evaluation, dict) else None
    settings = evaluation.get("settings") if isinstance(evaluation, dict) else None
    if not isinstance(record, dict) or not isinstance(settings, dict):
        raise VaekitError(
            f"{path} has no per-image results (written by an older vaekit); run `vaekit evaluate {run}` again"
        )
    values = read_per_image(run / record.get("file", PER_IMAGE_FILE), record.get("arrays_sha256"))
    if values.nll is None:
        raise VaekitError(
            f"{run} was evaluated without the NLL, so there is nothing to compare; run `vaekit evaluate {run}`"
        )
    return EvaluatedRun(run, settings, values.index, values.nll)


def check_comparable(first: EvaluatedRun, other: EvaluatedRun) -> None:
    """Refuses, naming the difference, two evaluations whose per-image NLLs cannot be paired."""
    a, b = first.index, other.index
    if len(a) != len(b) or not np.array_equal(a, b):
        which = (
            f"{len(a)} against {len(b)} images"
            if len(a) != len(b)
            else f"the same count, {len(a)}, but not the same images"
        )
        selected = [r.settings.get("test_selection") for r in (first, other)]
        detail = f" ({selected[0]} against {selected[1]})" if all(selected) and selected[0] != selected[1] else ""
        raise VaekitError(
            f"{first.path} and {other.path} were evaluated on different test images: {which}{detail}; "
            f"evaluate both with the same --test-subset"
        )
    differences = []
    for key, name in PROTOCOL:
        x, y = first.settings.get(key), other.settings.get(key)
        if x != y:
            if key == "dataset_checksum":
                x, y = (
                    f"{r.settings.get('dataset')} (checksum {str(r.settings.get(key))[:12]})" for r in (first, other)
                )
            differences.append(f"{name} {x} against {y}")
    if differences:
        raise VaekitError(
            f"{first.path} and {other.path} were evaluated under different protocols: {', '.join(differences)}; "
            f"evaluate both the same way (`vaekit evaluate RUN --nll-samples S`) before comparing"
        )


def compare_runs(run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Each run's mean test NLL ± its standard error, and every run after the first paired with
    the first: the mean per-image NLL difference (run - first) ± its standard error.

    The runs must have been evaluated (`vaekit evaluate RUN`) on the same test images under the
    same protocol; otherwise a VaekitError names what differs.
    """
    if len(run_dirs) < 2:
        raise VaekitError(f"compare needs at least two runs, got {len(run_dirs)}; pass RUN_A RUN_B [RUN_C ...]")
    runs = [load_evaluated_run(r) for r in run_dirs]
    first = runs[0]
    for other in runs[1:]:
        check_comparable(first, other)
    rows = []
    for i, run in enumerate(runs):
        mean, stderr = mean_and_stderr(run.nll)
        rows.append(
            {
                "run": str(run.path),
                "checkpoint": run.settings.get("checkpoint"),
                "checkpoint_step": run.settings.get("checkpoint_step"),
                "sampling_seed": run.settings.get("sampling_seed"),
                "nll": {"mean": mean, "stderr": stderr},
                "minus_first": paired_difference(first.nll, run.nll) if i else None,
            }
        )
    s = first.settings
    return {
        "images": int(len(first.index)),
        "protocol": {
            "dataset": s.get("dataset"),
            "dataset_checksum": s.get("dataset_checksum"),
            "test_selection": s.get("test_selection"),
            "test_indices_sha256": s.get("test_indices_sha256"),
            "binarized": s.get("binarized"),
            "binarize_seed": s.get("binarize_seed"),
            "likelihood": s.get("likelihood"),
            "nll_samples": s.get("nll_samples"),
        },
        "runs": rows,
    }


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as a table for the terminal."""
    p = result["protocol"]
    lines = [
        f"test NLL in nats on the same {result['images']} test images of {p['dataset']} ({protocol_text(p)})",
        "NLL - first: the mean over those images of (this run's NLL - the first run's) ± its standard "
        "error, paired image by image",
    ]
    width = max(len("run"), *(len(r["run"]) for r in result["runs"]))
    head = f"{'run':<{width}}  {'checkpoint':<10}  {'NLL':>16}  {'NLL - first':>16}  {'in SEs':>7}"
    lines += [head, "-" * len(head)]
    for row in result["runs"]:
        nll = f"{row['nll']['mean']:.2f} ± {row['nll']['stderr']:.2f}"
        diff, z = "", ""
        if row["minus_first"]:
            d = row["minus_first"]
            diff = f"{d['mean']:+.3f} ± {d['stderr']:.3f}"
            z = "-" if d["standard_errors"] is None else f"{d['standard_errors']:+.1f}"
        lines.append(f"{row['run']:<{width}}  {str(row['checkpoint']):<10}  {nll:>16}  {diff:>16}  {z:>7}".rstrip())
    return "\n".join(lines)
