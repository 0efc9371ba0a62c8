"""Fréchet distance and k-NN precision/recall of prior samples in vaekit's classifier features
(`vaekit evaluate`'s sample-quality numbers, without the NLL) for several runs, one table.

    python benchmarks/results/hvae_samples/frechet.py RUN [RUN ...] [--temperature T] [--out FILE]

RUN is a run folder or "zoo:NAME"; each is scored with its own best checkpoint ("latest" for
shipped models), 10,000 prior samples (pixel means), the sampling seed of `vaekit evaluate`.
`--temperature` scales the lower groups' prior draws of a hierarchy (1: plain ancestral samples).
Writes JSON (default benchmarks/results/hvae_samples/frechet.json).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from vaekit.evaluation.classifier import ClassifierSpec, get_classifier
from vaekit.evaluation.evaluate import sample_quality
from vaekit.runs.run_dir import load_run, load_run_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--out", default=str(Path(__file__).with_name("frechet.json")))
    args = p.parse_args()
    rows = {}
    for name in args.runs:
        run = load_run(name, "latest" if name.startswith("zoo:") else "best", device="cpu")
        data = load_run_data(run.config)
        classifier = get_classifier(data, ClassifierSpec(), progress=False)
        model = run.model
        if args.temperature != 1.0:
            model.sample = functools.partial(model.sample, temperature=args.temperature)
        rows[name] = sample_quality(model, data, classifier, args.samples)
        q = rows[name]["model_vs_test"]
        print(
            f"{name:50} levels {run.config.model.levels}  " + "  ".join(f"{k} {v:.4g}" for k, v in q.items()),
            flush=True,
        )
    floor = next(iter(rows.values()))["train_vs_test_floor"]
    print("training images against the test set (the floor): " + "  ".join(f"{k} {v:.4g}" for k, v in floor.items()))
    Path(args.out).write_text(json.dumps({"settings": vars(args), "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
