"""Configuration dataclasses: one per concern, saved as JSON next to every run.

`from_dict` is strict on purpose: a run directory whose config has unknown keys or wrong
types is refused with a message naming the key, instead of silently training something else.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import registry
from .errors import VaekitError

IMAGE_SIZES = (28, 32, 64)
LR_SCHEDULES = ("constant", "cosine")
# How a bound handles the mixture component of q(z|x) when K > 1 (model.VAE.forward):
# every component decoded, the importance-weighted bound over components, or one pathwise draw.
MIXTURE_ESTIMATORS = ("marginal", "stratified", "pathwise")
MIXTURE_WEIGHTS = ("learned", "equal")


def block_widths(size: int, width: int = 256) -> list[int]:
    """Channel widths of the network's stride-2 blocks for a `size`-pixel input, narrowest first,
    each twice the one before, ending at `width` (256: the notebook's 32-64-128-256 at 32 pixels).
    Here rather than in networks.py so that validating a config needs no torch."""
    blocks = int(math.log2(size)) - 1  # halve down to 2x2
    if 2 ** (blocks + 1) != size or blocks < 2:
        raise ValueError(f"network size must be a power of two >= 8, got {size}")
    if width <= 0 or width % 2 ** (blocks - 1):
        raise ValueError(f"width must be a multiple of {2 ** (blocks - 1)} for {size}-pixel networks "
                         f"(each of the {blocks} blocks halves it), got {width}")
    return [width >> (blocks - 1 - i) for i in range(blocks)]


@dataclass
class ModelConfig:
    """What the network and its distributions look like; enough to rebuild the model."""

    latent_size: int = 32
    width: int = 256  # channels of the widest conv block; each block before it has half (256: the notebook's)
    components: int = 1  # K mixture components in q(z|x); K=1 is the ordinary VAE
    # "learned": the notebook's softmax weights from the encoder; "equal": every component 1/K
    # (as in MISELBO, Kviman et al. 2023), so no component can take the others' weight.
    mixture_weights: str = "learned"
    channels: int = 1
    image_size: int = 28  # the data's size; 28 is zero-padded to 32 inside the data tensors
    prior: str = "normal"
    prior_components: int = 10  # M for the mog and vamp priors
    likelihood: str = "bernoulli"
    logistic_mixtures: int = 1  # mixture size of the discretised logistic likelihood
    gaussian_variance: str = "pixel"  # "pixel" or "global" learned variance
    logvar_min: float = -8.0  # q(z|x) log-variances are clamped here; exp(-8) ~ 3e-4
    logvar_max: float = 8.0
    # Class names of a user's own networks (VAE(config, encoder=..., decoder=...)); None is the
    # built-in ConvEncoder/ConvDecoder. Recorded so that loading such a run without the modules
    # is refused instead of building conv networks the weights do not fit; `width` is then unused.
    custom_encoder: str | None = None
    custom_decoder: str | None = None

    @property
    def custom_networks(self) -> bool:
        return self.custom_encoder is not None or self.custom_decoder is not None

    @property
    def padded_size(self) -> int:
        return 32 if self.image_size == 28 else self.image_size

    def validate(self) -> None:
        _positive(self, "latent_size", "--latent-size")
        _positive(self, "width", "--width")
        _positive(self, "components", "--components")
        _positive(self, "prior_components", "--prior-components")
        _positive(self, "logistic_mixtures", "--logistic-mixtures")
        if self.channels not in (1, 3):
            raise VaekitError(f"channels must be 1 or 3, got {self.channels}")
        if self.image_size not in IMAGE_SIZES:
            raise VaekitError(
                f"image size {self.image_size} is not supported; use one of {', '.join(map(str, IMAGE_SIZES))}"
            )
        try:
            block_widths(self.padded_size, self.width)
        except ValueError as exc:
            raise VaekitError(f"--{exc}") from None
        _choice(self.mixture_weights, MIXTURE_WEIGHTS, "--mixture-weights")
        _choice(self.prior, tuple(registry.priors()), "--prior")
        _choice(self.likelihood, tuple(registry.likelihoods()), "--likelihood")
        _choice(self.gaussian_variance, ("pixel", "global"), "--gaussian-variance")
        if not self.logvar_min < self.logvar_max:
            raise VaekitError("logvar_min must be below logvar_max")


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    train_subset: int | None = None  # use only the first N training images (quick runs)
    # Validation images held out of the training images; None is the dataset's default (the last
    # 5,000 of Fashion-MNIST's 60,000). The literature's protocol is 50,000/10,000: 10000.
    val_size: int | None = None
    binarize: bool = True  # dynamic binarisation: a fresh bernoulli(x) per batch
    # Note: RunConfig.validate sets binarize False when the likelihood models grey levels
    # (registered with data="grey": continuous-bernoulli, gaussian, logistic): they are meant
    # for the 8-bit data, so choosing one implies --grey.

    def validate(self) -> None:
        if self.train_subset is not None and self.train_subset <= 0:
            raise VaekitError(f"--train-subset must be positive, got {self.train_subset}")
        if self.val_size is not None and (not isinstance(self.val_size, int) or self.val_size <= 0):
            raise VaekitError(f"--val-size must be a positive integer, got {self.val_size}")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"  # or "cosine": from lr down to 0 over epochs x batches, a pure function of the step
    seed: int = 69420
    device: str = "auto"
    beta: float = 1.0  # weight of the KL; anything but 1 is not an ELBO and is logged as such
    kl_warmup: int = 0  # epochs of linear KL annealing from 0 to beta
    # Nats per latent dimension below which that dimension's KL is not penalised (Kingma et al.
    # 2016). Only where the KL is known per dimension in closed form: K=1 and the normal prior.
    free_bits: float = 0.0
    iw_samples: int = 1  # >1 trains on the importance-weighted bound
    mixture_estimator: str = "marginal"  # for K > 1: marginal (K decoder passes), stratified (SIWAE), pathwise (1 pass)
    checkpoint_every: int = 0  # steps; 0 means only at the end of each epoch
    grad_clip: float | None = None
    detect_anomaly: bool = False
    channels_last: bool = True
    tensorboard: bool = False  # scalars, images and the latent embedding under RUN/tensorboard
    max_minutes: float | None = None  # wall-clock budget: stop at the first step past it (a resumable checkpoint)

    def validate(self) -> None:
        _positive(self, "epochs", "--epochs")
        _positive(self, "batch_size", "--batch-size")
        _positive(self, "iw_samples", "--iw-samples")
        _choice(self.mixture_estimator, MIXTURE_ESTIMATORS, "--mixture-estimator")
        if self.importance_weighted and (self.beta != 1.0 or self.kl_warmup or self.free_bits):
            raise VaekitError("--beta, --kl-warmup and --free-bits reshape the ELBO's KL term; the importance-weighted bound "
                              "(--iw-samples > 1) has none, so use one or the other")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise VaekitError(f"--max-minutes (max_minutes) must be a positive number, got {self.max_minutes}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise VaekitError(f"--lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise VaekitError(f"--beta must be a non-negative number, got {self.beta}")
        if self.kl_warmup < 0:
            raise VaekitError(f"--kl-warmup must be >= 0 epochs, got {self.kl_warmup}")
        if not (math.isfinite(self.free_bits) and self.free_bits >= 0):
            raise VaekitError(f"--free-bits must be >= 0, got {self.free_bits}")
        if self.checkpoint_every < 0:
            raise VaekitError(f"--checkpoint-every must be >= 0 steps, got {self.checkpoint_every}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise VaekitError(f"--grad-clip must be positive, got {self.grad_clip}")
        _choice(self.device, ("auto", "cpu", "cuda"), "--device")
        _choice(self.lr_schedule, LR_SCHEDULES, "--lr-schedule")

    def validate_objective(self, model: ModelConfig) -> None:
        """The objective's checks that need the model too."""
        if self.free_bits and (model.components > 1 or model.prior != "normal"):
            # There the KL is a Monte Carlo estimate of the whole sum: a floor on it would drop
            # the gradient of every dimension at once, which is not free bits.
            raise VaekitError(f"--free-bits is a per-dimension KL floor, defined only for --components 1 and --prior normal "
                              f"(got --components {model.components}, --prior {model.prior}); use --kl-warmup or --beta instead")
        if self.mixture_estimator == "stratified" and model.components == 1:
            raise VaekitError("--mixture-estimator stratified needs --components > 1 (with one component it is the ELBO, "
                              "or IWAE with --iw-samples); drop it or raise --components")

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of optimizer step `step` (0-based) of `total_steps`. A function of
        the step alone, so a resumed run follows the same schedule without a scheduler state."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
        return self.lr

    @property
    def is_elbo(self) -> bool:
        """Whether the trained objective is the plain ELBO (or IWAE bound)."""
        return self.beta == 1.0 and self.kl_warmup == 0 and self.free_bits == 0.0

    @property
    def importance_weighted(self) -> bool:
        """Whether training maximises an importance-weighted bound rather than the ELBO."""
        return self.iw_samples > 1 or self.mixture_estimator == "stratified"

    @property
    def objective_name(self) -> str:
        """What training maximises, as logs and the metrics' `objective` column name it."""
        if self.mixture_estimator == "stratified":
            return f"siwae({self.iw_samples})"
        if self.iw_samples > 1:
            return f"iwae({self.iw_samples})"
        if self.is_elbo:
            return "elbo"
        return f"beta-objective(beta={self.beta:g}, warmup={self.kl_warmup:g}, free_bits={self.free_bits:g})"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    version: str = ""

    def validate(self, for_training: bool = True) -> "RunConfig":
        """Checks every setting; `for_training=False` (loading a finished run to sample or
        evaluate it) skips the objective's checks, so runs trained before one was added still load."""
        self.model.validate()
        if registry.likelihood(self.model.likelihood).data == "grey":
            self.data.binarize = False  # see DataConfig.binarize
        self.data.validate()
        self.train.validate()
        if for_training:
            self.train.validate_objective(self.model)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        from .checkpoint import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> "RunConfig":
        return _from_dict(cls, data, where)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise VaekitError(f"{path} not found; pass the run directory `vaekit train --out` wrote") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VaekitError(f"{path} is not valid JSON ({exc}); restore it from a backup") from None
        return cls.from_dict(data, where=str(path)).validate(for_training=False)


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise VaekitError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise VaekitError(f"{where}: unknown key(s) {', '.join(unknown)} in {cls.__name__}; remove them or use a matching vaekit version")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _from_dict(hint, value, f"{where}.{name}")
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


def _positive(obj: Any, name: str, flag: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, int) or value <= 0:
        raise VaekitError(f"{flag} must be a positive integer, got {value}")


def _choice(value: str, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise VaekitError(f"unknown {flag} {value!r}; choose one of {', '.join(choices)}")
