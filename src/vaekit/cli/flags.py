"""`vaekit train`'s settings flags, generated from the config sections' fields.

Every `settings.setting` field of RunConfig's sections (model, data, train) becomes one flag in
an argument group of its section; its type comes from the annotation, its help text, metavar,
choices and name from the field's metadata. Flags not given are left out of the parsed
arguments (argparse.SUPPRESS), so the dataclass default is the only default and a caller can
tell an explicit flag from a default one (`vaekit train --resume` takes only explicit ones).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from vaekit.config import RunConfig
from vaekit.config.settings import flag_name, has_flag
from vaekit.errors import VaekitError


def sections() -> dict[str, type]:
    """RunConfig's config sections by field name: model, data and train."""
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(hints[f.name])}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds a flag for every setting of every section, each section's in a group of its own."""
    for section, cls in sections().items():
        summary = cls.__doc__.strip().splitlines()[0] if cls.__doc__ else None
        group = parser.add_argument_group(f"{section} settings ({cls.__name__})", summary)
        hints = typing.get_type_hints(cls)
        for spec in dataclasses.fields(cls):
            if has_flag(spec):
                group.add_argument(
                    flag_name(cls, spec.name),
                    dest=f"{section}.{spec.name}",
                    default=argparse.SUPPRESS,
                    **_argument(spec, hints[spec.name]),
                )


def _argument(spec: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """add_argument's keywords for field `spec` annotated `hint`."""
    meta = spec.metadata
    text = meta.get("help")
    if callable(text):
        text = text()
    if text is not None:
        text = text.replace("{default}", str(spec.default)).replace("%", "%%")  # argparse %-formats help
    if hint is bool:
        if spec.default and "flag" not in meta:
            raise TypeError(f"{spec.name} defaults to True, so its flag turns it off: name that flag (flag='--no-...')")
        return {"action": "store_const", "const": not spec.default, "help": text}
    kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))  # X | None: parse an X
    choices = meta.get("choices")
    metavar = meta.get("metavar") or (None if choices else spec.name.upper())
    return {"type": None if kind is str else kind, "choices": choices, "metavar": metavar, "help": text}


def given_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The settings the command line named, by section, e.g. {"model": {}, "data": {}, "train": {"epochs": 3}}."""
    given: dict[str, dict[str, Any]] = {section: {} for section in sections()}
    for dest, value in vars(args).items():
        section, dot, name = dest.partition(".")
        if dot and section in given:
            given[section][name] = value
    return given


# The settings `vaekit train --resume RUN` may change; RUN keeps every other one. The precision
# may change with the machine (a bf16 run moved to a CPU without bf16 units), at the cost of the
# exact resume.
RESUMABLE = (("train", "epochs"), ("train", "max_minutes"), ("train", "precision"))


def resumed_config(args: argparse.Namespace, run: Path) -> RunConfig:
    """The validated config `vaekit train --resume run` continues with: the run's own, with the
    RESUMABLE settings the command line named; any other named setting is refused."""
    from vaekit.runs.run_dir import CONFIG  # loads torch: not for `vaekit --help`

    classes, given = sections(), given_settings(args)
    if not (run / CONFIG).is_file():
        raise VaekitError(
            f"--resume {run}: not a vaekit run directory (no {CONFIG}); pass the folder `vaekit train --out` wrote"
        )
    fixed = [flag_name(classes[s], name) for s, named in given.items() for name in named if (s, name) not in RESUMABLE]
    if fixed:
        raise VaekitError(
            f"--resume {run} keeps the run's own settings, so {', '.join(fixed)} cannot change; only --epochs, "
            "--max-minutes and --precision may (train a new run with --out for other settings)"
        )
    config = RunConfig.load(run / CONFIG)
    for section, name in RESUMABLE:  # a longer (or shorter) schedule; a budget is per process
        if name in given[section]:
            setattr(getattr(config, section), name, given[section][name])
    return config.validate()


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The resolved, validated config that parsed `vaekit train` flags describe; a setting not
    named keeps its dataclass default."""
    given = given_settings(args)
    config = RunConfig(**{section: cls(**given[section]) for section, cls in sections().items()})
    if "group_channels" in given["model"] and config.model.levels == 1:
        raise VaekitError("--group-channels sets the lower groups of a hierarchy; add --levels 2 or more")
    return config.resolved().validate()
