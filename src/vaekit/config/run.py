"""A run's settings (`RunConfig`): the three sections, their JSON round trip and the values they imply."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vaekit.atomic import atomic_write_text
from vaekit.config import registry
from vaekit.config.data import FIXED_SIZE_DATASETS, DataConfig
from vaekit.config.dataclass_json import from_dict
from vaekit.config.model import ModelConfig
from vaekit.config.train import TrainConfig, kl_warmup_default
from vaekit.errors import VaekitError

# What a config.json holding kl_warmup null was trained with: the default before it became
# KL_WARMUP_EPOCHS (today's configs hold the number).
LEGACY_KL_WARMUP_EPOCHS = 2.0

# What a config.json written before a setting existed meant by leaving it out, where today's
# default differs: such a run loads, evaluates and resumes as it was trained.
ABSENT_MEANS: dict[str, dict[str, Any]] = {
    "model": {"width": 256, "blocks": "plain"},
    "train": {"ema": 0.0, "lr_warmup": 0, "lr_schedule": "constant", "precision": "bf16", "kl_warmup": 0},
}


@dataclass
class RunConfig:
    """A run's settings, one section per concern, and the vaekit version that trained it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    version: str = ""

    def validate(self, for_training: bool = True) -> RunConfig:
        """Checks every setting and raises VaekitError naming the first bad one; returns self,
        unchanged. `for_training=False` (loading a finished run to sample or evaluate it) skips
        the objective's checks, so runs trained before one was added still load."""
        self.model.validate()
        self.data.validate()
        self.train.validate()
        if for_training:
            self.train.validate_objective(self.model)
        return self

    def resolved(self) -> RunConfig:
        """A copy with the values other settings imply filled in; this config is left as it is.
        A likelihood of grey levels (registered with data="grey") is meant for the 8-bit data, so it turns
        binarisation off, as --grey does."""
        config = copy.deepcopy(self)
        config.train.kl_warmup = config.train.warmup_epochs  # config.json holds the number, not "the default"
        spec = registry.likelihoods().get(config.model.likelihood)  # an unknown name is validate()'s to report
        if spec is not None and spec.data == "grey":
            config.data.binarize = False
        return config

    def dataset_image_size(self) -> int | None:
        """The image size to ask data.load_dataset for: None for FIXED_SIZE_DATASETS."""
        return None if self.data.dataset in FIXED_SIZE_DATASETS else self.model.image_size

    def to_dict(self) -> dict[str, Any]:
        """The settings as nested plain dicts, one per section, plus the version."""
        return asdict(self)

    def to_json(self) -> str:
        """The settings as indented JSON with sorted keys, as a run directory's config.json holds them."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        """Writes the settings' JSON to `path` atomically."""
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> RunConfig:
        """The config a dict (a parsed config.json) describes, read strictly: an unknown key or a wrong
        type raises VaekitError naming it and `where`. Settings older files left out take the value they
        were trained with (`ABSENT_MEANS`), and a stored `kl_warmup` of null the legacy default.
        """
        if isinstance(data, dict):
            data = dict(data)
            for section, absent in ABSENT_MEANS.items():
                if isinstance(data.get(section), dict):
                    data[section] = {**absent, **data[section]}
        config = from_dict(cls, data, where)
        if config.train.kl_warmup is None:  # stored when "the default" was 2 epochs: resume it as trained
            config.train.kl_warmup = kl_warmup_default(config.train.importance_weighted, LEGACY_KL_WARMUP_EPOCHS)
        return config

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """The resolved, validated config of a run directory's config.json."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise VaekitError(f"{path} not found; pass the run directory `vaekit train --out` wrote") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VaekitError(f"{path} is not valid JSON ({exc}); restore it from a backup") from None
        return cls.from_dict(data, where=str(path)).resolved().validate(for_training=False)
