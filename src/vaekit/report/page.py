"""A self-contained HTML report of one run directory.

``write_report(RUN)`` writes ``RUN/report.html``. It opens on what a reader came for: the
test NLL with its protocol (or the command that would make one), then the samples and the
loss curves with the other pictures, the metrics (last and best validation epoch), the full
evaluation record, and the configuration folded at the end, all in one file.  Images
are embedded as ``data:image/png;base64`` URIs, CSS is inline, and the page contains no
scripts and no network references; a Content-Security-Policy meta tag makes the browser
refuse anything else.  What the page says is read by :mod:`vaekit.report.facts`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Any

from vaekit.atomic import atomic_write
from vaekit.errors import VaekitError
from vaekit.report.facts import (
    best_row,
    headline,
    parse_cell,
    png_size,
    read_json,
    read_metrics,
    run_name,
    without_absent_numbers,
)

__all__ = ["write_report", "PICTURES"]

#: (file name, heading, caption) of the pictures a report shows, in order.
PICTURES: tuple[tuple[str, str, str], ...] = (
    ("samples.png", "Samples", "Images decoded from latent codes drawn from the prior."),
    (
        "loss_curves.png",
        "Loss curves",
        "ELBO, reconstruction term and KL divergence per epoch, training (solid) and validation (dashed), in nats.",
    ),
    (
        "reconstructions.png",
        "Reconstructions",
        "Validation images with each reconstruction directly below its original "
        "(rows alternate: originals, reconstructions).",
    ),
    (
        "interpolations.png",
        "Interpolations",
        "Decoded images along paths between two latent codes, one path per row.",
    ),
    (
        "latent_scatter.png",
        "Latent space",
        "Posterior means of validation images coloured by class "
        "(projected on the first two principal components when the latent space has more "
        "than two dimensions).",
    ),
    (
        "group_kl.png",
        "KL per latent group",
        "Each latent group's KL on the validation images per epoch (nats, log scale), top group first; "
        "a group below the dotted line (0.1 nats) is inactive: it carries almost nothing about the image.",
    ),
    (
        "component_usage.png",
        "Mixture component usage",
        "Mean posterior weight of each mixture component; the entropy in the title "
        "measures how evenly the components are used. Beside it, over the epochs: the effective "
        "number of components the validation set uses (exp of the mean weights' entropy) and "
        "how many each image spreads over (exp of the mean per-image entropy).",
    ),
)

#: Pictures only a hierarchy (--levels >= 2) has: not listed as missing elsewhere.
_HIERARCHY_ONLY = {"group_kl.png"}

#: Pictures made of image tiles: shown enlarged with crisp pixels.
_PIXEL_PICTURES = {"samples.png", "reconstructions.png", "interpolations.png"}

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d2330; background: #f5f6f8; line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6rem; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.2rem; margin: 1.6em 0 0.5em; border-bottom: 1px solid #d7dbe2; padding-bottom: 4px; }
h3 { font-size: 1.02rem; margin: 1.2em 0 0.4em; }
.sub { color: #5a6275; margin: 0 0 1em; }
.note { color: #5a6275; font-style: italic; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; background: #fff; font-size: 0.9rem; margin: 0.3em 0 0.8em; }
th, td { border: 1px solid #d7dbe2; padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: #e9ecf1; }
tbody th { background: #f3f5f8; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.86rem; }
pre { background: #fff; border: 1px solid #d7dbe2; padding: 10px; overflow-x: auto; }
figure { background: #fff; border: 1px solid #d7dbe2; margin: 0.4em 0 1.2em; padding: 12px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figure img.pixel { image-rendering: pixelated; }
figcaption { color: #3d4456; font-size: 0.9rem; margin-top: 8px; }
ul.missing { color: #5a6275; }
p.headline { font-size: 1.15rem; background: #fff; border: 1px solid #d7dbe2; padding: 10px 14px; }
details > summary { cursor: pointer; color: #3d4456; margin: 0.3em 0; }
"""


# ----------------------------------------------------------------------------- values


def _fmt_number(value: float | int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    mag = abs(value)
    if mag >= 1e6 or mag < 1e-3:
        return f"{value:.4e}"
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else f"{value:.4e}"


def _fmt_cell(text: str | None) -> tuple[str, bool]:
    """Display text of a CSV cell and whether it is numeric."""
    num = parse_cell(text)
    if num is None:
        return (text or "").strip(), False
    return _fmt_number(num), True


def _fmt_value(value: Any) -> tuple[str, bool]:
    """Display text of a JSON value and whether it is numeric."""
    if value is None:
        return "null", False
    if isinstance(value, bool):
        return ("true" if value else "false"), False
    if isinstance(value, (int, float)):
        return _fmt_number(value), True
    if isinstance(value, str):
        return value, False
    if (
        isinstance(value, list)
        and value
        and len(value) <= 16
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return "[" + ", ".join(_fmt_number(v) for v in value) + "]", False
    return json.dumps(value, ensure_ascii=False), False


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts -> [("a.b.c", leaf)]; lists and scalars are leaves."""
    if isinstance(obj, dict):
        if not obj and prefix:
            return [(prefix, {})]
        out: list[tuple[str, Any]] = []
        for key, val in obj.items():
            out.extend(_flatten(val, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return [(prefix or "value", obj)]


# ----------------------------------------------------------------------------- html bits


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _kv_table(obj: Any) -> str:
    rows = []
    for key, val in _flatten(obj):
        text, numeric = _fmt_value(val)
        cls = ' class="num"' if numeric else ""
        rows.append(f"<tr><th>{_e(key)}</th><td{cls}>{_e(text)}</td></tr>")
    if not rows:
        return '<p class="note">(empty)</p>'
    return '<div class="scroll"><table><tbody>\n' + "\n".join(rows) + "\n</tbody></table></div>"


def _metrics_section(run: Path) -> str:
    path = run / "metrics.csv"
    if not path.is_file():
        return '<p class="note">metrics.csv not found: no epoch finished yet.</p>'
    columns, rows = read_metrics(path)
    if not columns or not rows:
        return '<p class="note">metrics.csv has no rows yet.</p>'

    shown: list[tuple[str, dict[str, str]]] = []
    last = len(rows) - 1
    best = best_row(rows)
    if best is not None and best[0] == last:
        shown.append((f"last epoch = {best[1]}", rows[last]))
    else:
        shown.append(("last epoch", rows[last]))
        if best is not None:
            shown.append((best[1], rows[best[0]]))

    # one row per CSV column, one value column per shown epoch: fits any number of columns
    head = "".join(f"<th>{_e(label)}</th>" for label, _ in shown)
    body = []
    for c in columns:
        cells = []
        for _, row in shown:
            text, numeric = _fmt_cell(row.get(c))
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{_e(text)}</td>")
        body.append(f"<tr><th>{_e(c)}</th>{''.join(cells)}</tr>")
    n = len(rows)
    return (
        f'<p class="sub">{n} epoch{"s" if n != 1 else ""} recorded in metrics.csv; '
        "ELBO, reconstruction and KL in nats.</p>\n"
        f'<div class="scroll"><table><thead><tr><th>column</th>{head}</tr></thead><tbody>\n'
        + "\n".join(body)
        + "\n</tbody></table></div>"
    )


def _pictures_section(run: Path) -> str:
    parts: list[str] = []
    missing: list[str] = []
    for name, heading, caption in PICTURES:
        path = run / name
        if not path.is_file():
            if name not in _HIERARCHY_ONLY:
                missing.append(f"<li>{_e(heading)} ({_e(name)}): not generated</li>")
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            missing.append(f"<li>{_e(heading)} ({_e(name)}): unreadable ({_e(exc)})</li>")
            continue
        size = png_size(data)
        if size is None:
            missing.append(f"<li>{_e(heading)} ({_e(name)}): not a valid PNG, skipped</li>")
            continue
        width, height = size
        attrs = f'width="{width}" height="{height}"'
        cls = ""
        if name in _PIXEL_PICTURES:
            # small tiles: enlarge by a whole factor (at most 4x, at most ~1000 px wide)
            scale = max(1, min(4, 1000 // width))
            attrs = f'width="{width * scale}" height="{height * scale}"'
            cls = ' class="pixel"'
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure id="{_e(name.removesuffix(".png"))}">\n'
            f"<h3>{_e(heading)}</h3>\n"
            f'<img{cls} src="{uri}" alt="{_e(heading)}" {attrs}>\n'
            f"<figcaption>{_e(caption)} <code>{_e(name)}</code></figcaption>\n"
            "</figure>"
        )
    if missing:
        parts.append('<ul class="missing">\n' + "\n".join(missing) + "\n</ul>")
    return "\n".join(parts)


def _headline_section(run: Path, evaluation: Any) -> str:
    """The test NLL and its protocol, or the commands that would measure it."""
    if isinstance(evaluation, dict):
        try:
            return f'<p class="headline">{_e(headline(evaluation))}</p>'
        except (KeyError, TypeError):
            return '<p class="note">evaluation.json holds no test NLL; run <code>vaekit evaluate</code> again.</p>'
    where = _e(run)
    return (
        '<p class="note">Not evaluated yet. '
        f"<code>vaekit evaluate {where}</code> scores every test image with S=1,000 importance samples "
        f"(the literature's protocol); <code>vaekit evaluate {where} --test-subset 1000 --nll-samples 100</code> "
        "gives a quick estimate. Then <code>vaekit report</code> again.</p>"
    )


# ----------------------------------------------------------------------------- main


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``RUN/report.html`` for the run in ``run_dir`` and return its path.

    Raises :class:`VaekitError` when ``run_dir`` has no ``config.json``.
    """
    run = Path(run_dir)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise VaekitError(
            f"{run} is not a vaekit run directory (no config.json); pass the folder `vaekit train --out` wrote"
        )
    config = read_json(config_path)
    name = run_name(run, config)

    if isinstance(config, dict):
        config_html = _kv_table(config)
    else:
        config_html = f"<pre>{_e(json.dumps(config, indent=2, ensure_ascii=False))}</pre>"

    evaluation = read_json(run / "evaluation.json") if (run / "evaluation.json").is_file() else None
    if isinstance(evaluation, dict):
        eval_html = _kv_table(without_absent_numbers(evaluation))
    elif evaluation is not None:
        eval_html = f"<pre>{_e(json.dumps(evaluation, indent=2, ensure_ascii=False))}</pre>"
    else:
        eval_html = '<p class="note">evaluation.json not found: no evaluation yet.</p>'
    settings = len(_flatten(config)) if isinstance(config, dict) else 0

    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vaekit report: {_e(name)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>vaekit report: {_e(name)}</h1>
<p class="sub">Run directory <code>{_e(run.resolve())}</code></p>
<h2>Test NLL</h2>
{_headline_section(run, evaluation)}
<h2>Pictures</h2>
{_pictures_section(run)}
<h2>Metrics</h2>
{_metrics_section(run)}
<h2>Evaluation</h2>
{eval_html}
<h2>Configuration</h2>
<details><summary>{settings} settings from config.json</summary>
{config_html}
</details>
</main>
</body>
</html>
"""
    out = run / "report.html"
    return atomic_write(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
