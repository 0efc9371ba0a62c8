"""Nested dataclasses from parsed JSON, strictly: an unknown key or a wrong type is refused
with a message naming it, instead of silently training something else."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from vaekit.errors import VaekitError


def from_dict(cls: type, data: Any, where: str) -> Any:
    """An instance of dataclass `cls` from `data`; `where` names the source in error messages."""
    if not isinstance(data, dict):
        raise VaekitError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise VaekitError(
            f"{where}: unknown key(s) {', '.join(unknown)} in {cls.__name__}; "
            "remove them or use a matching vaekit version"
        )
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = from_dict(typing.cast(type, hint), value, f"{where}.{name}")
        else:
            values[name] = _check_type(value, hint, f"{where}.{name}")
    return cls(**values)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind in (int, str, bool) and type(value) is kind:
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise VaekitError(f"{where}: expected {names}, got {json.dumps(value)}; correct it in the JSON file")
