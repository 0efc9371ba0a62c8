"""vaekit: variational autoencoders with a mixture-of-Gaussians posterior.

The public API, importable from `vaekit` itself:

- settings: `RunConfig` and its sections `ModelConfig`, `DataConfig`, `TrainConfig`;
- training and runs: `train`, `load_run` (a run directory or `"zoo:NAME"`), `LoadedRun`;
- the model and its distributions: `VAE`, `MixtureOfGaussians`, `ImageDistribution`,
  `decoder_channels`, and the registries `register_likelihood`, `register_prior`,
  `register_closed_form_kl`;
- evaluation: `evaluate_run`, `compare_runs`;
- data: `load_dataset`; errors: `VaekitError`.

The subpackages are the layers, each importing only from those below it:
`cli` > `training` > `evaluation` > `report` > `runs` > `models` > `objectives` >
`distributions` > `data` > `config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vaekit._version import __version__
from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.distributions import (
    ImageDistribution,
    MixtureOfGaussians,
    register_closed_form_kl,
    register_likelihood,
    register_prior,
)
from vaekit.errors import VaekitError
from vaekit.models import VAE, decoder_channels

if TYPE_CHECKING:
    from vaekit.data import load_dataset
    from vaekit.evaluation.compare import compare_runs
    from vaekit.evaluation.evaluate import evaluate_run
    from vaekit.runs import LoadedRun, load_run
    from vaekit.training.loop import train

# The heavier entry points import on first use, so `import vaekit` stays quick.
_LAZY = {
    "train": "vaekit.training.loop",
    "load_run": "vaekit.runs.run_dir",
    "LoadedRun": "vaekit.runs.run_dir",
    "compare_runs": "vaekit.evaluation.compare",
    "evaluate_run": "vaekit.evaluation.evaluate",
    "load_dataset": "vaekit.data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vaekit' has no attribute {name!r}")


__all__ = [
    "RunConfig",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "train",
    "load_run",
    "LoadedRun",
    "VAE",
    "decoder_channels",
    "MixtureOfGaussians",
    "ImageDistribution",
    "register_likelihood",
    "register_prior",
    "register_closed_form_kl",
    "evaluate_run",
    "compare_runs",
    "load_dataset",
    "VaekitError",
    "__version__",
]
