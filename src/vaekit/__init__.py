"""vaekit: variational autoencoders with a mixture-of-Gaussians posterior."""

__version__ = "0.1.0"

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from .errors import VaekitError  # noqa: E402
from .model import VAE  # noqa: E402


def __getattr__(name: str):
    # The heavier entry points import lazily so `import vaekit` stays quick.
    if name == "train":
        from .training import train

        return train
    if name in ("load_run", "LoadedRun"):
        from . import runs

        return getattr(runs, name)
    if name == "compare_runs":
        from .compare import compare_runs

        return compare_runs
    if name == "load_dataset":
        from .data import load_dataset

        return load_dataset
    raise AttributeError(name)


__all__ = [
    "VAE",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "RunConfig",
    "VaekitError",
    "train",
    "load_run",
    "load_dataset",
    "compare_runs",
    "__version__",
]
