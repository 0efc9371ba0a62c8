"""`vaekit train`'s settings flags are generated from the config dataclasses, and parse back to them."""

import argparse
import dataclasses

import pytest

from vaekit.cli.flags import add_config_flags, config_from_args, given_settings, sections
from vaekit.cli.main import build_parser
from vaekit.config import RunConfig
from vaekit.config.settings import flag_name, has_flag
from vaekit.errors import VaekitError


def settings_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    add_config_flags(parser)
    return parser


def parse(*argv: str) -> RunConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def argv_for(config: RunConfig) -> list[str]:
    """The flags that ask for `config`'s every setting that differs from its default."""
    argv = []
    for section, cls in sections().items():
        for spec in dataclasses.fields(cls):
            value = getattr(getattr(config, section), spec.name)
            if not has_flag(spec) or value == spec.default:
                continue
            flag = flag_name(cls, spec.name)
            argv += [flag] if isinstance(value, bool) else [flag, str(value)]
    return argv


def test_every_field_has_a_flag_or_is_marked_internal():
    flags = {option: action.dest for action in settings_parser()._actions for option in action.option_strings}
    expected = {}
    for section, cls in sections().items():
        for spec in dataclasses.fields(cls):
            if has_flag(spec):
                expected[flag_name(cls, spec.name)] = f"{section}.{spec.name}"
            else:
                assert spec.metadata == {"cli": False}, f"{cls.__name__}.{spec.name} has metadata but no flag"
    assert flags == expected
    internal = {spec.name for cls in sections().values() for spec in dataclasses.fields(cls) if not has_flag(spec)}
    assert internal == {"channels", "logvar_min", "logvar_max", "custom_encoder", "custom_decoder"}


def test_every_flag_has_help_text():
    for action in settings_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"


def test_no_flags_give_the_dataclass_defaults():
    assert parse() == RunConfig().resolved()  # the default KL warm-up written as its number
    assert given_settings(build_parser().parse_args(["train"])) == {"model": {}, "data": {}, "train": {}}


def test_existing_flag_names_and_special_cases_keep_their_meaning():
    config = parse(
        "--grey",
        "--no-channels-last",
        "--detect-anomaly",
        "--tensorboard",
        "--image-size",
        "64",
        "--epochs",
        "3",
        "--max-minutes",
        "2.5",
        "--device",
        "cpu",
        "--val-size",
        "100",
    )
    assert config.data.binarize is False and config.train.channels_last is False
    assert config.train.detect_anomaly and config.train.tensorboard
    assert (config.model.image_size, config.train.epochs, config.train.max_minutes) == (64, 3, 2.5)
    assert (config.train.device, config.data.val_size) == ("cpu", 100)
    assert parse("--likelihood", "gaussian").data.binarize is False  # a grey likelihood implies --grey


def test_only_the_flags_given_are_settings_given():
    args = build_parser().parse_args(["train", "--resume", "runs/x", "--epochs", "4", "--quiet"])
    assert given_settings(args) == {"model": {}, "data": {}, "train": {"epochs": 4}}
    assert args.resume == "runs/x" and args.quiet


@pytest.mark.parametrize(
    "changes",
    [
        {
            "model": dict(
                latent_size=5,
                width=64,
                components=3,
                mixture_weights="equal",
                image_size=64,
                prior="mog",
                prior_components=4,
                likelihood="logistic",
                logistic_mixtures=2,
                gaussian_variance="global",
            ),
            "data": dict(dataset="digits", data_dir="/data", train_subset=100, val_size=50, binarize=False),
            "train": dict(
                epochs=3,
                batch_size=16,
                lr=0.01,
                lr_schedule="cosine",
                seed=7,
                device="cpu",
                iw_samples=2,
                mixture_estimator="stratified",
                checkpoint_every=5,
                grad_clip=1.5,
                detect_anomaly=True,
                channels_last=False,
                tensorboard=True,
                compile=True,
                max_minutes=2.5,
            ),
        },
        {
            "model": dict(prior="normal"),  # free bits needs the closed-form KL
            "train": dict(beta=0.5, kl_warmup=2, free_bits=0.25, mixture_estimator="pathwise"),
        },
    ],
)
def test_a_config_round_trips_through_its_flags(changes):
    defaults = RunConfig()
    config = dataclasses.replace(
        defaults,
        **{section: dataclasses.replace(getattr(defaults, section), **values) for section, values in changes.items()},
    )
    assert parse(*argv_for(config)) == config.resolved()


def test_a_bad_value_is_refused_with_the_flag_named():
    with pytest.raises(VaekitError, match="--latent-size must be a positive integer"):
        parse("--latent-size", "0")
    with pytest.raises(VaekitError, match="unknown --prior 'nope'"):
        parse("--prior", "nope")
    with pytest.raises(VaekitError, match="argument --epochs: invalid int value"):
        parse("--epochs", "x")
