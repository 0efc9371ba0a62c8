"""The likelihoods and priors vaekit can build, by name, with what each needs.

A variant registers itself where it is defined:

    @register_likelihood("poisson", discrete=True, data="grey")
    class PoissonHead(nn.Module):
        @classmethod
        def from_config(cls, config: ModelConfig) -> "PoissonHead": ...

and from then on `ModelConfig(likelihood="poisson")` validates, the CLI offers it, evaluation
labels its numbers, and the parametrised tests cover it. This module needs no torch, so config
validation and the CLI's help can read it; the built-in variants are registered by importing
likelihoods.py, discretised_logistic.py and priors.py, which `likelihoods()` and `priors()` do
on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

T = TypeVar("T")
DATA_KINDS = ("binary", "grey")


@dataclass(frozen=True)
class LikelihoodSpec:
    """A likelihood p(x|z) and the facts the rest of vaekit reads off it."""

    name: str
    cls: type[Any]  # built by cls.from_config(model_config) -> nn.Module returning a distribution
    # Whether log_prob is a log probability of discrete data (so -log p is an NLL in nats and
    # has a bits/dim) rather than a log density, whose value depends on the units of x.
    discrete: bool
    data: str  # "binary": trains on binarised pixels; "grey": on grey levels, never binarised
    title: str = ""  # how evaluation's labels name it, e.g. "discretised logistic"
    help: str = ""  # one line for the CLI


@dataclass(frozen=True)
class PriorSpec:
    """A prior p(z) and the facts the rest of vaekit reads off it."""

    name: str
    cls: type[Any]  # built by cls.from_config(model_config) -> nn.Module; called with model.encode
    help: str = ""


_LIKELIHOODS: dict[str, LikelihoodSpec] = {}
_PRIORS: dict[str, PriorSpec] = {}
_BUILT_IN = (
    "vaekit.distributions.likelihoods",
    "vaekit.distributions.discretised_logistic",
    "vaekit.distributions.priors",
)  # modules whose import registers the built-ins


def register_likelihood(name: str, *, discrete: bool, data: str, title: str = "", help: str = "") -> Callable[[T], T]:
    """Class decorator: makes `name` a valid ModelConfig.likelihood built by cls.from_config(config)."""
    if data not in DATA_KINDS:
        raise ValueError(f"likelihood {name!r}: data must be one of {', '.join(DATA_KINDS)}, got {data!r}")

    def register(cls: T) -> T:
        spec = LikelihoodSpec(name, _buildable(cls, name), bool(discrete), data, title or name, help)
        _add(_LIKELIHOODS, spec, "likelihood")
        return cls

    return register


def register_prior(name: str, *, help: str = "") -> Callable[[T], T]:
    """Class decorator: makes `name` a valid ModelConfig.prior built by cls.from_config(config)."""

    def register(cls: T) -> T:
        _add(_PRIORS, PriorSpec(name, _buildable(cls, name), help), "prior")
        return cls

    return register


def unregister(kind: str, name: str) -> None:
    """Removes a registered likelihood or prior (`kind` "likelihood" or "prior"); for tests."""
    tables: dict[str, dict[str, Any]] = {"likelihood": _LIKELIHOODS, "prior": _PRIORS}
    tables[kind].pop(name, None)


def likelihoods() -> dict[str, LikelihoodSpec]:
    """Every registered likelihood by name, the built-ins first."""
    _import_built_ins()
    return dict(_LIKELIHOODS)


def priors() -> dict[str, PriorSpec]:
    """Every registered prior by name, the built-ins first."""
    _import_built_ins()
    return dict(_PRIORS)


def likelihood(name: str) -> LikelihoodSpec:
    """The registered likelihood `name`; raises ValueError listing the choices if there is none."""
    return _lookup(likelihoods(), name, "likelihood")


def prior(name: str) -> PriorSpec:
    """The registered prior `name`; raises ValueError listing the choices if there is none."""
    return _lookup(priors(), name, "prior")


def describe(specs: dict[str, Any]) -> str:
    """'a (what a does), b (what b does) or c': the choices as a help line lists them."""
    items = [f"{name} ({spec.help})" if spec.help else name for name, spec in specs.items()]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def likelihood_help() -> str:
    """`--likelihood`'s help: the registered choices, read when the parser is built."""
    return describe(likelihoods()) + "; the grey-level ones imply --grey"


def prior_help() -> str:
    """`--prior`'s help: the registered choices."""
    return describe(priors())


def _buildable(cls: Any, name: str) -> Any:
    if not callable(getattr(cls, "from_config", None)):
        raise TypeError(
            f"{name!r}: {getattr(cls, '__name__', cls)!r} needs a from_config(model_config) classmethod "
            f"to be registered"
        )
    return cls


def _add(table: dict, spec: Any, kind: str) -> None:
    known = table.get(spec.name)
    # Re-registering the same class is harmless (a module imported twice, e.g. under two names);
    # a second class under a taken name would silently change what configs build.
    if known is not None and (known.cls.__module__, known.cls.__qualname__) != (
        spec.cls.__module__,
        spec.cls.__qualname__,
    ):
        raise ValueError(f"{kind} {spec.name!r} is already registered by {known.cls.__qualname__}; unregister it first")
    table[spec.name] = spec


def _lookup(table: dict[str, T], name: str, kind: str) -> T:
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(table)}") from None


def _import_built_ins() -> None:
    # Imported here, not at the top: those modules need torch and import this one to register.
    for module in _BUILT_IN:
        importlib.import_module(module)
