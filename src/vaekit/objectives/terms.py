"""`Terms`: a bound on log p(x) per image and its parts, as every bound returns them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Terms:
    """A bound on log p(x) per image and its parts: the reconstruction term and the KL (and the KL
    per latent dimension where it has a closed form).
    """

    elbo: torch.Tensor  # (B,) the bound on log p(x)
    recon: torch.Tensor  # (B,) E_q[log p(x|z)]
    kl: torch.Tensor  # (B,) E_q[log q(z|x) - log p(z)]
    kl_per_dim: torch.Tensor | None = None  # (B, D) when the KL has a closed form (kl.register_closed_form_kl)
    latent_size: int | None = None  # D, the number of latent dimensions
    # True when .elbo is an importance-weighted bound, which is not recon - kl (it is above);
    # recon and kl are then diagnostics and the training loss is -elbo.
    importance_weighted: bool = False
    # (B, L) with levels L >= 2: each group's share of .kl, top group first (they sum to .kl)
    kl_groups: torch.Tensor | None = None
