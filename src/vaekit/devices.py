"""Which device a run uses: `--device auto` is CUDA where there is one."""

from __future__ import annotations

import torch

from vaekit.errors import VaekitError


def resolve_device(kind: str) -> torch.device:
    """The device `--device` names; auto is CUDA where there is one."""
    if kind == "cuda" and not torch.cuda.is_available():
        raise VaekitError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(kind)
