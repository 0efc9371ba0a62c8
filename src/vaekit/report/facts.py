"""What a report says about a run, read from its directory: configuration, name, metrics and
their best epoch, evaluation, and the size of each picture.  No HTML here: :mod:`vaekit.report.page`
renders these facts.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from vaekit.errors import VaekitError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse_cell(text: str | None) -> float | None:
    """Float of a CSV cell; None for missing, empty or unparsable text."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a :class:`VaekitError` that says what to do when it is unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VaekitError(
            f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); re-run the command that wrote it"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VaekitError(f"cannot read {path}: {exc}") from None


def run_name(run: Path, config: Any) -> str:
    """The run's name from its configuration, else its directory's name."""
    if isinstance(config, dict):
        for key in ("name", "run_name"):
            if isinstance(config.get(key), str) and config[key].strip():
                return config[key].strip()
    return run.resolve().name or str(run)


def read_metrics(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns of metrics.csv in ``path`` and its rows that hold any value."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = [c for c in (reader.fieldnames or []) if c is not None]
            rows = [r for r in reader if any((v or "").strip() for k, v in r.items() if k)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VaekitError(f"cannot read {path}: {exc}") from None
    return columns, rows


def without_absent_numbers(evaluation: dict) -> dict:
    """The evaluation minus test numbers it does not give (null: bits/dim of a density);
    its number_kind row says why."""
    test = evaluation.get("test")
    if not isinstance(test, dict):
        return evaluation
    return {**evaluation, "test": {k: v for k, v in test.items() if v is not None}}


def _elbo_is_maximised(rows: list[dict[str, str]], prefix: str) -> bool:
    """Whether larger ``{prefix}_elbo`` is better.

    The ELBO proper is maximised, but a run may log the negative ELBO (a loss).  When the
    reconstruction and KL columns are there, the relation between the three decides:
    ``elbo == -(recon + kl)`` or ``elbo == recon - kl`` means the bound itself,
    ``elbo == recon + kl`` means a loss.  Otherwise the bound is assumed.
    """
    votes = 0
    for row in rows:
        elbo = parse_cell(row.get(f"{prefix}_elbo"))
        recon = parse_cell(row.get(f"{prefix}_recon"))
        kl = parse_cell(row.get(f"{prefix}_kl"))
        if elbo is None or recon is None or kl is None:
            continue
        as_loss = abs(elbo - (recon + kl))
        as_bound = min(abs(elbo + recon + kl), abs(elbo - (recon - kl)))
        if as_loss < as_bound:
            votes -= 1
        elif as_bound < as_loss:
            votes += 1
    return votes >= 0


def best_row(rows: list[dict[str, str]]) -> tuple[int, str] | None:
    """Index of the best validation row and a description of the criterion."""
    for prefix in ("val", "train"):
        scored = [
            (i, v)
            for i, r in enumerate(rows)
            if (v := parse_cell(r.get(f"{prefix}_elbo"))) is not None and math.isfinite(v)
        ]
        if not scored:
            continue
        maximise = _elbo_is_maximised(rows, prefix)
        pick = max if maximise else min
        idx = pick(scored, key=lambda t: t[1])[0]
        which = "validation" if prefix == "val" else "training (no validation values)"
        return idx, f"best {which} {prefix}_elbo ({'highest' if maximise else 'lowest'})"
    return None


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when ``data`` is no PNG."""
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    if width <= 0 or height <= 0:
        return None
    return width, height


def protocol_text(settings: dict[str, Any]) -> str:
    """Which test images, binarised how, how many importance samples: what an NLL needs beside it."""
    binarised = f"binarised with seed {settings['binarize_seed']}" if settings["binarized"] else "grey levels"
    return f"{settings['test_selection']}; {binarised}; S={settings['nll_samples']} importance samples"


def headline(evaluation: dict[str, Any]) -> str:
    """One line for a newcomer: the test NLL of an `evaluate_run` result and its protocol."""
    s, test = evaluation["settings"], evaluation["test"]
    kind = "NLL" if test.get("bits_per_dim") is not None else "negative log-density"
    line = (
        f"test {kind} {test['nll']['mean']:.2f} ± {test['nll']['stderr']:.2f} nats on {s['test_images']} test images "
        f"of {s['dataset']} ({protocol_text(s)})"
    )
    if s["dataset"] == "fashion-mnist" and s["binarized"]:
        line += "; papers score all 10000 at S=5000 (a VAE with a N(0, I) prior: 228.70)"
    return line
