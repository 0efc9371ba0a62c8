"""The per-image numbers `vaekit evaluate` saves beside evaluation.json, for paired comparisons.

`evaluation_per_image.npz` holds plain arrays (numpy.load(..., allow_pickle=False) reads it):
    index  int64    each image's position in the dataset's test split
    nll    float64  -log p(x) by importance sampling, nats (absent when the NLL was not computed)
    elbo   float64  the one-sample ELBO, nats
evaluation.json names the file and a SHA-256 of its arrays (not of the file: a zip records
when it was written), so a stale or foreign file is never paired with the wrong evaluation.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.errors import VaekitError

PER_IMAGE_FILE = "evaluation_per_image.npz"
ARRAYS = {"index": "position in the dataset's test split", "nll": "-log p(x), nats", "elbo": "nats"}
VALUES = ("nll", "elbo")


@dataclass
class PerImage:
    """One evaluation's numbers, image by image."""

    index: np.ndarray  # int64 (N,)
    elbo: np.ndarray  # float64 (N,)
    nll: np.ndarray | None  # float64 (N,), None when the evaluation skipped the NLL


def indices_sha256(index: np.ndarray) -> str:
    """A fingerprint of which test images, in which order, an evaluation used."""
    return hashlib.sha256(np.ascontiguousarray(index, dtype="<i8").tobytes()).hexdigest()


def arrays_sha256(values: PerImage) -> str:
    """A fingerprint of the numbers themselves, the same whenever the same numbers are saved."""
    digest = hashlib.sha256()
    for name in ("index", *VALUES):
        array = getattr(values, name)
        if array is not None:
            digest.update(
                name.encode() + np.ascontiguousarray(array, dtype="<i8" if name == "index" else "<f8").tobytes()
            )
    return digest.hexdigest()


def per_image_bytes(values: PerImage) -> bytes:
    """The npz file's contents."""
    arrays: dict[str, Any] = {
        "index": values.index,
        "elbo": values.elbo,
        **({"nll": values.nll} if values.nll is not None else {}),
    }
    if any(a.ndim != 1 or a.shape != values.index.shape for a in arrays.values()):
        raise ValueError(
            f"per-image arrays must be 1-D and equally long, got { ({k: a.shape for k, a in arrays.items()}) }"
        )
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_per_image(path: Path, expected_sha256: str | None = None) -> PerImage:
    """The arrays of a per-image file; one-line VaekitErrors for a missing, foreign or damaged one."""
    run = path.parent
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VaekitError(f"{run} has no per-image evaluation ({path.name}); run `vaekit evaluate {run}`") from None
    except OSError as exc:
        raise VaekitError(f"{path} cannot be read ({exc.strerror}); check its permissions") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise VaekitError(
            f"{path} is not a readable npz file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            f"run `vaekit evaluate {run}` again"
        ) from None
    missing = [k for k in ("index", "elbo") if k not in arrays]
    n = arrays["index"].shape if "index" in arrays else None
    if missing or any(a.ndim != 1 or a.shape != n for a in arrays.values()):
        raise VaekitError(
            f"{path} does not hold equally long 1-D index, elbo (and nll) arrays; run `vaekit evaluate {run}` again"
        )
    if not np.issubdtype(arrays["index"].dtype, np.integer) or any(
        not np.issubdtype(arrays[k].dtype, np.floating) for k in VALUES if k in arrays
    ):
        raise VaekitError(
            f"{path} holds arrays of the wrong type (integer index, float values expected); run `vaekit "
            f"evaluate {run}` again"
        )
    values = PerImage(
        index=arrays["index"].astype(np.int64),
        elbo=arrays["elbo"].astype(np.float64),
        nll=arrays["nll"].astype(np.float64) if "nll" in arrays else None,
    )
    if expected_sha256 is not None and arrays_sha256(values) != expected_sha256:
        raise VaekitError(
            f"{path} does not belong to {run / 'evaluation.json'} (the SHA-256 of its numbers differs, e.g. an "
            f"interrupted evaluation); run `vaekit evaluate {run}` again"
        )
    return values
