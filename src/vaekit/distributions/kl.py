"""Closed-form KL divergences per latent dimension, looked up by the types of q and p.

As `torch.distributions.kl.register_kl`, but an entry returns KL(q || p) per dimension
(*batch, D), which free bits need, or None where this q has no closed form against p (a
mixture posterior with K > 1): the bounds then use a Monte Carlo estimate.

    @register_closed_form_kl(MyPosterior, MyPrior)
    def _kl(q: MyPosterior, p: MyPrior) -> torch.Tensor | None: ...
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch.distributions import Distribution

KLFunction = Callable[[Distribution, Distribution], "torch.Tensor | None"]
_TABLE: dict[tuple[type, type], KLFunction] = {}
# an entry may take its own subclasses of Distribution (q: MyPosterior, p: MyPrior)
F = TypeVar("F", bound=Callable[..., "torch.Tensor | None"])


def register_closed_form_kl(type_q: type, type_p: type) -> Callable[[F], F]:
    """Decorator: `fn(q, p)` gives KL(q || p) per dimension for q of type_q and p of type_p (or subclasses)."""

    def register(fn: F) -> F:
        _TABLE[type_q, type_p] = fn
        return fn

    return register


def closed_form_kl(q: Distribution, p: Distribution) -> torch.Tensor | None:
    """KL(q || p) per dimension (*batch, D) if the table has it for these two, else None."""
    # The most specific registered pair wins, as in torch.distributions.kl.
    for type_q in type(q).__mro__:
        for type_p in type(p).__mro__:
            fn = _TABLE.get((type_q, type_p))
            if fn is not None:
                return fn(q, p)
    return None
