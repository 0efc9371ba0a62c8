"""Configuration: one dataclass per concern, saved as JSON next to every run.

Each setting is defined once, in its section's module: its default and (`settings.setting`)
the help text of the `vaekit train` flag that `vaekit.cli.flags` generates from it. `validate`
only checks; the values other settings imply are filled in by `RunConfig.resolved`, which
returns a new config. A run directory's config.json is read strictly (`dataclass_json`): an
unknown key or a wrong type is refused with a message naming it.
"""

from vaekit.config.data import FIXED_SIZE_DATASETS, DataConfig
from vaekit.config.model import (
    ACTIVE_GROUP_KL,
    BLOCKS,
    IMAGE_SIZES,
    MIXTURE_WEIGHTS,
    ModelConfig,
    block_widths,
    group_names,
    padded_size,
)
from vaekit.config.run import ABSENT_MEANS, LEGACY_KL_WARMUP_EPOCHS, RunConfig
from vaekit.config.train import (
    DEVICES,
    KL_WARMUP_EPOCHS,
    LR_SCHEDULES,
    MIXTURE_ESTIMATORS,
    OPTIMIZERS,
    PRECISIONS,
    TrainConfig,
    kl_warmup_default,
)

__all__ = [
    "RunConfig",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "padded_size",
    "block_widths",
    "group_names",
    "ACTIVE_GROUP_KL",
    "kl_warmup_default",
    "IMAGE_SIZES",
    "BLOCKS",
    "MIXTURE_WEIGHTS",
    "MIXTURE_ESTIMATORS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "PRECISIONS",
    "DEVICES",
    "KL_WARMUP_EPOCHS",
    "LEGACY_KL_WARMUP_EPOCHS",
    "ABSENT_MEANS",
    "FIXED_SIZE_DATASETS",
]
