"""The command line: parses arguments, calls the library, turns VaekitError into one line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .errors import VaekitError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        raise VaekitError(f"{message} (see `{self.prog} --help`)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a VAE and write a run directory")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default), mnist, digits, cifar10, folder:PATH, npz:PATH")
    p.add_argument("--data-dir", help="folder holding the dataset files")
    p.add_argument("--image-size", type=int, help="image size for folder/npz/digits data (28, 32 or 64)")
    p.add_argument("--latent-size", type=int, default=32)
    p.add_argument("--components", type=int, default=1, help="mixture components K of q(z|x)")
    p.add_argument("--prior", default="normal")
    p.add_argument("--prior-components", type=int, default=10)
    p.add_argument("--likelihood", default="bernoulli")
    p.add_argument("--epochs", type=int, help="passes over the training set (default 10)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=69420)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--kl-warmup", type=int, default=0, help="epochs of linear KL annealing")
    p.add_argument("--free-bits", type=float, default=0.0, help="nats per latent dimension")
    p.add_argument("--iw-samples", type=int, default=1, help="train on the importance-weighted bound with S samples")
    p.add_argument("--train-subset", type=int, help="use only the first N training images")
    p.add_argument("--grey", action="store_true", help="train on grey levels instead of dynamically binarised pixels")
    p.add_argument("--out", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its latest checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS")
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--detect-anomaly", action="store_true")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW tensors (slower on CPU)")
    p.add_argument("--device", default="auto", choices=None, help="auto, cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _config_from_args(args) -> "RunConfig":
    from .config import DataConfig, ModelConfig, RunConfig, TrainConfig

    model = ModelConfig(
        latent_size=args.latent_size, components=args.components, prior=args.prior,
        prior_components=args.prior_components, likelihood=args.likelihood,
        image_size=args.image_size or 28,
    )
    data = DataConfig(dataset=args.dataset, data_dir=args.data_dir, train_subset=args.train_subset, binarize=not args.grey)
    train = TrainConfig(
        epochs=10 if args.epochs is None else args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
        beta=args.beta, kl_warmup=args.kl_warmup, free_bits=args.free_bits, iw_samples=args.iw_samples,
        checkpoint_every=args.checkpoint_every, grad_clip=args.grad_clip, detect_anomaly=args.detect_anomaly,
        channels_last=not args.no_channels_last,
    )
    return RunConfig(model, data, train).validate()


def cmd_train(args) -> int:
    from .config import RunConfig
    from .runs import CONFIG
    from .train import train

    if args.resume:
        run = Path(args.resume)
        if not (run / CONFIG).is_file():
            raise VaekitError(f"--resume {run}: not a vaekit run directory (no {CONFIG}); pass the folder `vaekit train --out` wrote")
        config = RunConfig.load(run / CONFIG)
        if args.epochs is not None:  # an explicit --epochs extends (or shortens) the resumed run
            config.train.epochs = args.epochs
            config.validate()
        out = train(config, resume=run, progress=not args.quiet)
    else:
        out = train(_config_from_args(args), out=args.out, progress=not args.quiet)
    print(out)
    return 0


def cmd_sample(args) -> int:
    import torch

    from .plots import save_image_grid
    from .runs import load_run

    if args.n <= 0:
        raise VaekitError(f"-n must be positive, got {args.n}")
    run = load_run(args.run)
    torch.manual_seed(args.seed)
    out = Path(args.out or run.path / "samples.png")
    save_image_grid(run.model.sample(args.n), out)
    print(out)
    return 0


def cmd_reconstruct(args) -> int:
    from .data import load_dataset
    from .plots import save_reconstructions

    from .runs import load_run

    if args.n <= 0:
        raise VaekitError(f"-n must be positive, got {args.n}")
    run = load_run(args.run)
    data = load_dataset(run.config.data.dataset, run.config.data.data_dir, image_size=_data_image_size(run.config))
    x = data.test.images[: args.n].float().div(255)
    out = Path(args.out or run.path / "reconstructions.png")
    save_reconstructions(run.model.crop(x), run.model.reconstruct(x), out)
    print(out)
    return 0


def _data_image_size(config) -> int | None:
    return None if config.data.dataset in ("fashion-mnist", "mnist") else config.model.image_size


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaekit", description="Variational autoencoders with a mixture-of-Gaussians posterior.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    p = sub.add_parser("sample", help="draw images from the prior into a grid PNG")
    p.add_argument("run")
    p.add_argument("-n", type=int, default=64)
    p.add_argument("--out")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("reconstruct", help="test images beside their reconstructions")
    p.add_argument("run")
    p.add_argument("-n", type=int, default=32)
    p.add_argument("--out")
    return parser


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "reconstruct": cmd_reconstruct}


def main(argv: Sequence[str] | None = None) -> int:
    from .train import TrainingInterrupted

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except VaekitError as exc:
        print(f"vaekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
