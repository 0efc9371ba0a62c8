"""How a config field declares its command-line flag, so the dataclass is its only definition.

flags.py turns every `setting` of the config sections into a `vaekit train` flag; an `internal`
field gets none. Here, apart from config.py, so that config.py's dataclasses and flags.py read
the same metadata without importing each other's concerns.
"""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any, Callable


def setting(default: Any, help: str | Callable[[], str] | None = None, **flag: Any) -> Any:
    """A field with a `vaekit train` flag. `help` may name the default as {default}, or be a function
    returning the text when the parser is built (choices read from a registry); `flag` takes
    argparse's `metavar` and `choices`, and `flag="--name"` where the flag is not --field-name
    (a bool that defaults to True needs one: its flag turns it off)."""
    return field(default=default, metadata={"help": help, **flag})


def internal(default: Any) -> Any:
    """A field with no flag: filled in from the data or the networks, or set from Python only."""
    return field(default=default, metadata={"cli": False})


def has_flag(spec: Any) -> bool:
    """Whether dataclass field `spec` gets a flag."""
    return spec.metadata.get("cli", True)


def flag_name(cls: type, name: str) -> str:
    """The command-line flag of field `name` of config class `cls`, as error messages name it."""
    spec = next(f for f in fields(cls) if f.name == name)
    return spec.metadata.get("flag", "--" + name.replace("_", "-"))
