"""Copies a trained, evaluated run into the zoo (src/vaekit/zoo/NAME) as `vaekit` ships it:
config.json, metrics.csv, the evaluated checkpoint's weights and state.json (no optimizer
state), evaluation.json with its per-image file, and model_card.json (how it was trained).

    python scripts/ship_zoo.py RUN NAME --command "vaekit train ..." --minutes 20.1 --hardware "..."

Evaluate the run first with the protocol the README quotes (`vaekit evaluate RUN --checkpoint
latest --no-quality`); then `vaekit evaluate zoo:NAME --no-quality` gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from vaekit.evaluation.per_image import PER_IMAGE_FILE
from vaekit.runs.checkpoint import resolve_pointer
from vaekit.runs.shipped import ZOO_DIR

LIMIT_BYTES = 5 * 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("name")
    parser.add_argument("--command", required=True, help="the exact command that trained it")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock training minutes")
    parser.add_argument("--hardware", required=True)
    args = parser.parse_args()
    run = Path(args.run)
    evaluation = json.loads((run / "evaluation.json").read_text())
    checkpoint = resolve_pointer(run / "checkpoints", evaluation["settings"]["checkpoint"])
    out = ZOO_DIR / args.name
    shutil.rmtree(out, ignore_errors=True)
    (out / "checkpoints" / checkpoint.name).mkdir(parents=True)
    for name in ("config.json", "metrics.csv", "evaluation.json", PER_IMAGE_FILE):
        shutil.copy2(run / name, out / name)
    for name in ("model.safetensors", "state.json"):
        shutil.copy2(checkpoint / name, out / "checkpoints" / checkpoint.name / name)
    (out / "checkpoints" / "latest").write_text(checkpoint.name + "\n")
    test = evaluation["test"]
    card = {
        "name": f"zoo:{args.name}",
        "command": args.command,
        "train_minutes": args.minutes,
        "hardware": args.hardware,
        "test_nll": test["nll"],
        "test_elbo": test["elbo"],
        "protocol": {
            k: evaluation["settings"][k] for k in ("test_selection", "nll_samples", "sampling_seed", "batch_size")
        },
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if size > LIMIT_BYTES:
        raise SystemExit(f"{out} holds {size / 2**20:.1f} MiB, over the 5 MiB a shipped model may take")
    print(f"{out}: {size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
