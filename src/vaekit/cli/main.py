"""The command line: parses arguments, calls the library, turns VaekitError into one line.

Each command imports the modules it runs inside its function: they load torch, and `vaekit
--help` or a refused argument should answer without waiting for it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from vaekit.cli.flags import add_config_flags, config_from_args, resumed_config
from vaekit.errors import VaekitError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + error
        raise VaekitError(f"{message} (see `{self.prog} --help`)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a VAE and write a run directory")
    p.add_argument("--out", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p)


def cmd_train(args) -> int:
    """`vaekit train`: trains a new run from the flags, or continues `--resume RUN`; prints the run directory."""
    from vaekit.training.loop import train

    if args.resume:
        run = Path(args.resume)
        config = resumed_config(args, run)
        out = train(config, resume=run, progress=not args.quiet)
    else:
        out = train(config_from_args(args), out=args.out, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":
        print(out)
    return 0


def cmd_sample(args) -> int:
    """`vaekit sample`: draws `-n` images from the run's prior into a grid PNG and prints its path."""
    import torch

    from vaekit.devices import resolve_device
    from vaekit.report.image_grids import save_image_grid
    from vaekit.runs.run_dir import load_run
    from vaekit.runs.shipped import output_dir

    if args.n <= 0:
        raise VaekitError(f"-n must be positive, got {args.n}")
    if not 0 <= args.temperature <= 10:
        raise VaekitError(f"--temperature must be between 0 and 10, got {args.temperature}")
    run = load_run(args.run, device=resolve_device(args.device))
    if args.temperature != 1 and run.model.levels == 1:
        raise VaekitError(
            f"--temperature scales the lower groups of a hierarchy, and {args.run} has one level; sample it without it"
        )
    torch.manual_seed(args.seed)
    out = Path(args.out or output_dir(run.path) / "samples.png")
    save_image_grid(run.model.sample(args.n, temperature=args.temperature).cpu(), out)
    print(out)
    return 0


def cmd_reconstruct(args) -> int:
    """`vaekit reconstruct`: saves the first `-n` test images beside their reconstructions; prints the PNG's path."""
    from vaekit.devices import resolve_device
    from vaekit.report.image_grids import save_reconstructions
    from vaekit.runs.run_dir import load_run, load_run_data
    from vaekit.runs.shipped import output_dir

    if args.n <= 0:
        raise VaekitError(f"-n must be positive, got {args.n}")
    device = resolve_device(args.device)
    run = load_run(args.run, device=device)
    data = load_run_data(run.config)
    x = data.test.images[: args.n].float().div(255)
    out = Path(args.out or output_dir(run.path) / "reconstructions.png")
    save_reconstructions(run.model.crop(x), run.model.reconstruct(x.to(device)).cpu(), out)
    print(out)
    return 0


def cmd_evaluate(args) -> int:
    """`vaekit evaluate`: scores the run on the test set (`evaluate_run`); prints a JSON summary or `--headline`."""
    from vaekit.evaluation.classifier import ClassifierSpec
    from vaekit.evaluation.evaluate import evaluate_run

    spec = ClassifierSpec(epochs=args.classifier_epochs) if args.classifier_epochs else None
    result = evaluate_run(
        args.run,
        samples=args.nll_samples,
        test_subset=args.test_subset,
        batch_size=args.batch_size,
        json_path=args.json,
        quality=not args.no_quality,
        quality_samples=args.quality_samples,
        classifier_spec=spec,
        seed=args.seed,
        progress=not args.quiet,
        fast=not args.plain,
        compile=args.compile,
        checkpoint=args.checkpoint,
        device=args.device,
    )
    if args.headline:
        from vaekit.report.facts import headline

        print(headline(result))
    else:
        print(json.dumps(_evaluation_summary(result), indent=2))
    return 0


def _evaluation_summary(result: dict) -> dict:
    """The headline numbers; the full record (settings, per-dimension variances) is in evaluation.json."""
    summary = {
        "number_kind": result["number_kind"],
        **{k: f"{v['mean']:.3f} +- {v['stderr']:.3f}" for k, v in result["test"].items() if v is not None},
    }
    units = result["active_units"]
    top = f" in {units['group']}" if "kl_groups" in result else ""
    summary["active_units"] = f"{units['count']} of {units['of']}{top}"
    if "components" in result:
        summary["component_weights"] = [round(w, 3) for w in result["components"]["mean_weights"]]
        summary["component_entropy"] = round(result["components"]["entropy_of_mean_weights"], 4)
    quality = result.get("sample_quality")
    if quality and "skipped" not in quality:
        summary["classifier_test_accuracy"] = round(quality["classifier"]["test_accuracy"], 4)
        for name in ("model_vs_test", "train_vs_test_floor"):
            summary[name] = {k: round(v, 4) for k, v in quality[name].items()}
    elif quality:
        summary["sample_quality"] = quality["skipped"]
    summary["settings"] = {k: result["settings"][k] for k in ("nll_samples", "test_images", "binarize_seed")}
    return summary


def cmd_compare(args) -> int:
    """`vaekit compare`: prints the paired comparison of evaluated runs and writes it to `--json` if given."""
    from vaekit.atomic import atomic_write_text
    from vaekit.evaluation.compare import compare_runs, format_comparison

    result = compare_runs(args.runs)
    print(format_comparison(result))
    if args.json:
        try:
            atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            raise VaekitError(
                f"--json {args.json}: cannot write it ({exc.strerror}); pass a writable file path"
            ) from None
    return 0


def cmd_interpolate(args) -> int:
    """`vaekit interpolate`: writes strips decoded between posterior means of test images; prints the path."""
    from vaekit.report.interpolate import interpolate_run

    print(interpolate_run(args.run, args.out, pairs=args.pairs, steps=args.steps, seed=args.seed))
    return 0


def cmd_report(args) -> int:
    """`vaekit report`: makes the run's missing pictures, writes RUN/report.html and prints its path."""
    from vaekit.report.page import write_report
    from vaekit.report.pictures import ensure_pictures
    from vaekit.runs.shipped import is_shipped, run_path

    if is_shipped(run_path(args.run)):  # its pictures would be written into the shipped folder
        raise VaekitError(
            f"{args.run} is a shipped model; vaekit report reads and writes a run folder you trained "
            "(vaekit sample, reconstruct, interpolate and evaluate work on it)"
        )
    ensure_pictures(args.run)
    print(write_report(args.run))
    return 0


def _add_evaluation_commands(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="test-set ELBO, importance-sampled NLL and sample quality into RUN/evaluation.json, "
        "per-image NLLs and ELBOs into RUN/evaluation_per_image.npz",
    )
    p.add_argument("run")
    p.add_argument(
        "--nll-samples",
        type=int,
        default=1000,
        metavar="S",
        help="importance samples per image (default 1000; the literature uses 5000)",
    )
    p.add_argument("--test-subset", type=int, metavar="N", help="evaluate only the first N test images")
    p.add_argument("--batch-size", type=int, default=250, metavar="B", help="test images per batch (default 250)")
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    p.add_argument(
        "--quality-samples",
        type=int,
        default=10_000,
        metavar="N",
        help="prior samples for the Fréchet distance and precision/recall (default 10000, at most the test size)",
    )
    p.add_argument("--no-quality", action="store_true", help="skip the classifier-based sample-quality numbers")
    p.add_argument(
        "--classifier-epochs", type=int, help="epochs of the feature classifier when it is trained (default 4)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the importance and prior samples")
    p.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="the best validation epoch (default) or the last weights saved, e.g. where a time budget "
        "ended the run mid-epoch",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device_flag(p)
    p.add_argument(
        "--headline",
        action="store_true",
        help="print one line, the test NLL and its protocol, instead of the JSON summary",
    )
    p.add_argument(
        "--plain",
        action="store_true",
        help="evaluate the network as trained, without folding BatchNorm (slower; the same numbers to float rounding)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the networks first (pays a compile time once; wins on GPU)",
    )
    p = sub.add_parser(
        "compare", help="mean test NLLs of evaluated runs, and each run's per-image NLL difference to the first, paired"
    )
    p.add_argument(
        "runs", nargs="+", metavar="RUN", help="run directories `vaekit evaluate` has scored on the same test images"
    )
    p.add_argument("--json", metavar="FILE", help="also write the table to FILE")
    p = sub.add_parser("interpolate", help="decoded strips between posterior means of test images")
    p.add_argument("run")
    p.add_argument("--out", help="PNG file (default RUN/interpolations.png)")
    p.add_argument("--pairs", type=int, default=3, help="pairs of test images, one linear and one spherical row each")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="which test images are paired")
    p = sub.add_parser("report", help="write RUN/report.html, one self-contained page")
    p.add_argument("run")


def _add_device_flag(p: argparse.ArgumentParser) -> None:
    # The random draws differ between CPU and CUDA: a number reproduces to the last digit on the device it was made on.
    from vaekit.config import DEVICES

    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto (default: CUDA where there is one), cpu or cuda",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `vaekit` argument parser with every sub-command and its flags."""
    parser = _Parser(prog="vaekit", description="Variational autoencoders with a mixture-of-Gaussians posterior.")
    from vaekit._version import __version__

    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    p = sub.add_parser("sample", help="draw images from the prior into a grid PNG")
    p.add_argument("run")
    p.add_argument("-n", type=int, default=64)
    p.add_argument("--out")
    p.add_argument("--seed", type=int, default=0)
    temperature = "with --levels >= 2: scale of the lower groups' prior draws (default 1; below 1 is smoother)"
    p.add_argument("--temperature", type=float, default=1.0, help=temperature)
    _add_device_flag(p)
    p = sub.add_parser("reconstruct", help="test images beside their reconstructions")
    p.add_argument("run")
    p.add_argument("-n", type=int, default=32)
    p.add_argument("--out")
    _add_device_flag(p)
    _add_evaluation_commands(sub)
    return parser


def os_error_message(exc: OSError) -> str:
    """The path and the cause of a file-system failure, on one line."""
    # A failed rename names the temporary file first and the destination second: the
    # destination is the path the user knows.
    path = exc.filename2 or exc.filename
    cause = exc.strerror or str(exc)
    where = f"cannot create or write {path}" if path else "a file could not be written"
    return f"{where} ({cause}); choose a path that can be created and written, with free space"


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "reconstruct": cmd_reconstruct,
    "evaluate": cmd_evaluate,
    "compare": cmd_compare,
    "interpolate": cmd_interpolate,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `vaekit` command line on `argv` (default `sys.argv[1:]`) and returns the exit status.

    A `VaekitError` or a file-system error is printed as one line and returns 2; an interrupted training
    returns its own exit code; Ctrl-C returns 130.
    """
    from vaekit.training.stops import TrainingInterrupted

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except TrainingInterrupted as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; one line is enough
            print(str(exc), file=sys.stderr)
        return exc.exit_code
    except VaekitError as exc:
        print(f"vaekit: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder that cannot be made or a file that cannot be written, whatever os.access said
        print(f"vaekit: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
