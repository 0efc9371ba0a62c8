"""Configuration dataclasses: one per concern, saved as JSON next to every run.

Each setting is defined once, here: its default and (settings.setting) the help text of the
`vaekit train` flag that flags.py generates from it. `validate` only checks; the values other
settings imply are filled in by `RunConfig.resolved`, which returns a new config.

A run directory's config.json is read strictly (dataclass_json): an unknown key or a wrong
type is refused with a message naming it.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import registry
from .atomic import atomic_write_text
from .dataclass_json import from_dict
from .errors import VaekitError
from .settings import flag_name, internal, setting

IMAGE_SIZES = (28, 32, 64)
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamax")  # step.make_optimizer
DEVICES = ("auto", "cpu", "cuda")  # auto: CUDA where there is one
# How a bound handles the mixture component of q(z|x) when K > 1 (model.VAE.forward):
# every component decoded, the importance-weighted bound over components, or one pathwise draw.
MIXTURE_ESTIMATORS = ("marginal", "stratified", "pathwise")
MIXTURE_WEIGHTS = ("learned", "equal")
BLOCKS = ("plain", "gated")  # the built-in networks' conv blocks (networks._block)
KL_WARMUP_EPOCHS = 4.0  # --kl-warmup's default for the ELBO
# Their images are 28 pixels whatever --image-size says, so their loader is not asked for a size.
FIXED_SIZE_DATASETS = ("fashion-mnist", "mnist")


def kl_warmup_default(importance_weighted: bool, elbo_epochs: float = KL_WARMUP_EPOCHS) -> float:
    """--kl-warmup's default: none for the importance-weighted bounds, whose KL weight is fixed
    at 1, else `elbo_epochs`."""
    return 0.0 if importance_weighted else elbo_epochs


def padded_size(image_size: int) -> int:
    """The network's input size for `image_size`-pixel data: 28 is zero-padded to 32 (a power of two)."""
    return 32 if image_size == 28 else image_size


def block_widths(size: int, width: int = 256) -> list[int]:
    """Channel widths of the network's stride-2 blocks for a `size`-pixel input, narrowest first,
    each twice the one before, ending at `width` (256: the notebook's 32-64-128-256 at 32 pixels).
    Here rather than in networks.py so that validating a config needs no torch."""
    blocks = int(math.log2(size)) - 1  # halve down to 2x2
    if 2 ** (blocks + 1) != size or blocks < 2:
        raise ValueError(f"network size must be a power of two >= 8, got {size}")
    if width <= 0 or width % 2 ** (blocks - 1):
        raise ValueError(
            f"width must be a multiple of {2 ** (blocks - 1)} for {size}-pixel networks "
            f"(each of the {blocks} blocks halves it), got {width}"
        )
    return [width >> (blocks - 1 - i) for i in range(blocks)]


@dataclass
class ModelConfig:
    """What the network and its distributions look like; enough to rebuild the model."""

    latent_size: int = setting(32, "dimensions D of the latent space (default {default})")
    # Each block before the widest has half its channels.
    width: int = setting(
        96, "channels of the widest conv block (default {default}; 256 is the notebook's, ~3x slower on a CPU)"
    )
    blocks: str = setting(
        "gated",
        "conv blocks of the built-in networks: gated (default; twice the channels, half gating the other,"
        " ~2x the FLOPs of plain at one width) or plain (conv, BatchNorm, LeakyReLU: the notebook's)",
        choices=BLOCKS,
    )
    components: int = setting(1, "mixture components K of q(z|x)")  # K=1 is the ordinary VAE
    # "equal" is MISELBO's (Kviman et al. 2023): no component can take the others' weight.
    mixture_weights: str = setting(
        "learned",
        "learned: the encoder's softmax weights (default); equal: every component weighs 1/K",
        choices=MIXTURE_WEIGHTS,
    )
    channels: int = internal(1)  # the data's
    # Training records the data's size here: 28 for FIXED_SIZE_DATASETS, whatever was asked.
    image_size: int = setting(28, "image size for folder/npz/digits data (28, 32 or 64)")
    # The VampPrior won the 20-minute recipe on the gated network (benchmarks/README.md, "Second round").
    prior: str = setting("vamp", registry.prior_help)
    prior_components: int = setting(
        100, "pseudo-inputs of the VampPrior or components of the mog prior (default {default})", metavar="M"
    )
    likelihood: str = setting("bernoulli", registry.likelihood_help)
    logistic_mixtures: int = setting(1, "components of the discretised logistic likelihood")
    gaussian_variance: str = setting("pixel", "learned variance of the gaussian likelihood: pixel or global")
    logvar_min: float = internal(-8.0)  # q(z|x) log-variances are clamped here; exp(-8) ~ 3e-4
    logvar_max: float = internal(8.0)
    # Class names of a user's own networks (VAE(config, encoder=..., decoder=...)); None is the
    # built-in ConvEncoder/ConvDecoder. Recorded so that loading such a run without the modules
    # is refused instead of building conv networks the weights do not fit; `width` is then unused.
    custom_encoder: str | None = internal(None)
    custom_decoder: str | None = internal(None)

    @property
    def custom_networks(self) -> bool:
        return self.custom_encoder is not None or self.custom_decoder is not None

    @property
    def padded_size(self) -> int:
        return padded_size(self.image_size)

    def validate(self) -> ModelConfig:
        """Raises VaekitError naming the first bad setting; returns self, unchanged."""
        for name in ("latent_size", "width", "components", "prior_components", "logistic_mixtures"):
            _positive(self, name)
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
        _choice(self, "blocks", BLOCKS)
        _choice(self, "mixture_weights", MIXTURE_WEIGHTS)
        _choice(self, "prior", tuple(registry.priors()))
        _choice(self, "likelihood", tuple(registry.likelihoods()))
        _choice(self, "gaussian_variance", ("pixel", "global"))
        if not self.logvar_min < self.logvar_max:
            raise VaekitError("logvar_min must be below logvar_max")
        return self


@dataclass
class DataConfig:
    """Which images, and how they are split and binarised."""

    dataset: str = setting("fashion-mnist", "fashion-mnist (default), mnist, digits, cifar10, folder:PATH, npz:PATH")
    data_dir: str | None = setting(None, "folder holding the dataset files")
    train_subset: int | None = setting(None, "use only the first N training images")
    val_size: int | None = setting(
        None,
        "validation images held out of the training set (default: the dataset's, "
        "5000 of Fashion-MNIST's 60000; the literature's protocol is 10000)",
        metavar="N",
    )
    # Dynamic binarisation: a fresh bernoulli(x) per batch. RunConfig.resolved turns it off for
    # the likelihoods of grey levels (registered with data="grey"): choosing one implies --grey.
    binarize: bool = setting(True, "train on grey levels instead of dynamically binarised pixels", flag="--grey")

    def validate(self) -> DataConfig:
        """Raises VaekitError naming the first bad setting; returns self, unchanged."""
        if self.train_subset is not None and self.train_subset <= 0:
            raise VaekitError(f"--train-subset must be positive, got {self.train_subset}")
        if self.val_size is not None and (not isinstance(self.val_size, int) or self.val_size <= 0):
            raise VaekitError(f"--val-size must be a positive integer, got {self.val_size}")
        return self


@dataclass
class TrainConfig:
    """How the model is trained: the objective, the optimizer, the schedule and the budget."""

    # 16 fill about 20 minutes of a 2-core CPU with the default model: benchmarks/recipe.py's budget.
    epochs: int = setting(16, "passes over the training set (default {default})")
    batch_size: int = setting(128, "training images per optimizer step (default {default})")
    optimizer: str = setting(
        "adam",
        "adam (default) or adamax (Adam with an infinity norm, Kingma & Ba 2015; what Tomczak & Welling's "
        "VampPrior models trained with)",
        choices=OPTIMIZERS,
    )
    lr: float = setting(3e-3, "peak learning rate of the optimizer (default {default})")
    # A pure function of the step (lr_at), so a resumed run needs no scheduler state.
    lr_schedule: str = setting("cosine", "cosine (default): anneal --lr to 0 over --epochs; or constant")
    lr_warmup: int = setting(
        400, "optimizer steps of linear learning-rate warm-up from 0 to --lr (default {default})", metavar="STEPS"
    )
    seed: int = setting(69420, "seed of the initial weights, the batch order and the noise (default {default})")
    device: str = setting("auto", "auto, cpu or cuda")
    beta: float = setting(1.0, "weight of the KL term (not 1: a beta-objective, not the ELBO)")
    # None: KL_WARMUP_EPOCHS for the ELBO (benchmarks/README.md, "Fourth round"), none for the
    # importance-weighted bounds, which have no KL term to weight. resolved() writes the number.
    kl_warmup: float | None = setting(
        None,
        f"epochs over which the KL term's weight rises linearly from 0 to --beta (default: {KL_WARMUP_EPOCHS:g}, "
        "or 0 with an importance-weighted bound; 0: none)",
        metavar="EPOCHS",
    )
    # Only where the KL is known per dimension in closed form: K=1 and the normal prior.
    free_bits: float = setting(
        0.0,
        "free bits (Kingma et al. 2016): no KL penalty on a latent dimension whose "
        "batch-mean KL is below this many nats; "
        "only with --components 1 and --prior normal",
    )
    iw_samples: int = setting(1, "train on the importance-weighted bound with S samples")
    mixture_estimator: str = setting(
        "marginal",
        "for --components > 1: marginal decodes every component (K decoder passes; default), stratified "
        "trains SIWAE over the components (any --iw-samples, 1 included), pathwise decodes one draw from "
        "the whole mixture with gradients to the weights (one pass per sample)",
        choices=MIXTURE_ESTIMATORS,
    )
    checkpoint_every: int = setting(
        0, "also save every STEPS optimizer steps (default 0: at the end of each epoch only)", metavar="STEPS"
    )
    grad_clip: float | None = setting(None, "clip the gradients' global norm to this value")
    # Validation, the checkpoint's model.safetensors, sampling and evaluation all use the average;
    # the trained weights travel in training_state.pt, for --resume.
    ema: float = setting(
        0.0,
        "decay of an exponential moving average of the weights, which validation, sampling and evaluation "
        "then use (e.g. 0.999; default 0: the trained weights)",
        metavar="DECAY",
    )
    detect_anomaly: bool = setting(False, "run under torch.autograd's anomaly detection (slow)")
    channels_last: bool = setting(True, "keep NCHW tensors (slower on CPU)", flag="--no-channels-last")
    # bf16 lost to fp32 for vaekit's own networks on an H100 (benchmarks/README.md: the step is
    # bound by kernel launches, which the casts add to); it may pay for a wide network of one's own.
    precision: str = setting(
        "fp32", "the networks' arithmetic on a GPU: fp32 (default) or bf16 (autocast; the bounds stay fp32)"
    )
    # On the 2-core CPU a compiled gated step ran 1.11-1.17x an eager one (benchmarks/README.md);
    # the compiling is paid again by every process that trains, a resumed one included.
    compile: bool = setting(
        False, "torch.compile the encoder and decoder for training (about a minute of compiling first)"
    )
    tensorboard: bool = setting(False, "also log to RUN/tensorboard (needs `pip install tensorboard`)")
    # Counted from this process's start, so a resumed run gets a budget of its own.
    max_minutes: float | None = setting(
        None, "wall-clock budget: stop at the first step past it with a resumable checkpoint", metavar="MIN"
    )

    def validate(self) -> TrainConfig:
        """Raises VaekitError naming the first bad setting; returns self, unchanged."""
        for name in ("epochs", "batch_size", "iw_samples"):
            _positive(self, name)
        _choice(self, "mixture_estimator", MIXTURE_ESTIMATORS)
        _choice(self, "optimizer", OPTIMIZERS)
        if self.importance_weighted and (self.beta != 1.0 or self.warmup_epochs or self.free_bits):
            raise VaekitError(
                "--beta, --kl-warmup and --free-bits reshape the ELBO's KL term; the importance-weighted "
                "bound (--iw-samples > 1) has none, so use one or the other"
            )
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise VaekitError(f"--max-minutes (max_minutes) must be a positive number, got {self.max_minutes}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise VaekitError(f"--lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise VaekitError(f"--beta must be a non-negative number, got {self.beta}")
        if self.kl_warmup is not None and not (math.isfinite(self.kl_warmup) and self.kl_warmup >= 0):
            raise VaekitError(f"--kl-warmup must be >= 0 epochs, got {self.kl_warmup}")
        if not (math.isfinite(self.free_bits) and self.free_bits >= 0):
            raise VaekitError(f"--free-bits must be >= 0, got {self.free_bits}")
        if self.lr_warmup < 0:
            raise VaekitError(f"--lr-warmup must be >= 0 steps, got {self.lr_warmup}")
        if self.checkpoint_every < 0:
            raise VaekitError(f"--checkpoint-every must be >= 0 steps, got {self.checkpoint_every}")
        if not (math.isfinite(self.ema) and 0 <= self.ema < 1):
            raise VaekitError(f"--ema must be a decay in [0, 1), got {self.ema}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise VaekitError(f"--grad-clip must be positive, got {self.grad_clip}")
        _choice(self, "device", DEVICES)
        _choice(self, "precision", ("fp32", "bf16"))
        _choice(self, "lr_schedule", LR_SCHEDULES)
        return self

    def validate_objective(self, model: ModelConfig) -> None:
        """The objective's checks that need the model too."""
        if self.free_bits and (model.components > 1 or model.prior != "normal"):
            # There the KL is a Monte Carlo estimate of the whole sum: a floor on it would drop
            # the gradient of every dimension at once, which is not free bits.
            raise VaekitError(
                f"--free-bits is a per-dimension KL floor, defined only for --components 1 and --prior normal "
                f"(got --components {model.components}, --prior {model.prior}); use --kl-warmup or --beta instead"
            )
        if self.mixture_estimator == "stratified" and model.components == 1:
            raise VaekitError(
                "--mixture-estimator stratified needs --components > 1 (with one component it is the ELBO, "
                "or IWAE with --iw-samples); drop it or raise --components"
            )

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of optimizer step `step` (0-based) of `total_steps`. A function of
        the step alone, so a resumed run follows the same schedule without a scheduler state.
        After `lr_warmup` steps rising linearly, the cosine anneals over the steps that remain."""
        if step < self.lr_warmup:
            return self.lr * (step + 1) / self.lr_warmup
        if self.lr_schedule == "cosine":
            step, total_steps = step - self.lr_warmup, total_steps - self.lr_warmup
            return self.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
        return self.lr

    @property
    def warmup_epochs(self) -> float:
        """The KL warm-up's length in epochs, --kl-warmup's default resolved."""
        if self.kl_warmup is None:
            return kl_warmup_default(self.importance_weighted)
        return float(self.kl_warmup)

    def trains_elbo_in(self, epoch: int) -> bool:
        """Whether epoch `epoch` (0-based) trains the plain ELBO: once a warm-up is over, it does."""
        return self.beta == 1.0 and self.free_bits == 0.0 and epoch >= self.warmup_epochs

    @property
    def importance_weighted(self) -> bool:
        """Whether training maximises an importance-weighted bound rather than the ELBO."""
        return self.iw_samples > 1 or self.mixture_estimator == "stratified"

    def objective_in(self, epoch: int) -> str:
        """What epoch `epoch` (0-based) maximises, as the metrics' `objective` column names it."""
        if self.mixture_estimator == "stratified":
            return f"siwae({self.iw_samples})"
        if self.iw_samples > 1:
            return f"iwae({self.iw_samples})"
        if self.trains_elbo_in(epoch):
            return "elbo"
        return f"beta-objective(beta={self.beta:g}, warmup={self.warmup_epochs:g}, free_bits={self.free_bits:g})"


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
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> RunConfig:
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


def _positive(config: Any, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, int) or value <= 0:
        raise VaekitError(f"{flag_name(type(config), name)} must be a positive integer, got {value}")


def _choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise VaekitError(f"unknown {flag_name(type(config), name)} {value!r}; choose one of {', '.join(choices)}")
