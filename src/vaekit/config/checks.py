"""Checks shared by the config sections: each raises VaekitError naming the flag."""

from __future__ import annotations

from typing import Any

from vaekit.config.settings import flag_name
from vaekit.errors import VaekitError


def check_positive(config: Any, name: str) -> None:
    """Raises VaekitError unless `config.name` is a positive integer."""
    value = getattr(config, name)
    if not isinstance(value, int) or value <= 0:
        raise VaekitError(f"{flag_name(type(config), name)} must be a positive integer, got {value}")


def check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    """Raises VaekitError unless `config.name` is one of `choices`."""
    value = getattr(config, name)
    if value not in choices:
        raise VaekitError(f"unknown {flag_name(type(config), name)} {value!r}; choose one of {', '.join(choices)}")
