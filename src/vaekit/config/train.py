"""The training settings (`TrainConfig`): objective, optimizer, schedule, budget, speed paths."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vaekit.config.checks import check_choice, check_positive
from vaekit.config.model import ModelConfig
from vaekit.config.settings import setting
from vaekit.errors import VaekitError

LR_SCHEDULES = ("constant", "cosine")
# The networks' arithmetic in training; vaekit.devices.resolve_precision turns auto into one of the others.
PRECISIONS = ("auto", "fp32", "bf16")
OPTIMIZERS = ("adam", "adamax")  # step.make_optimizer
DEVICES = ("auto", "cpu", "cuda")  # auto: CUDA where there is one
# How a bound handles the mixture component of q(z|x) when K > 1 (model.VAE.forward):
# every component decoded, the importance-weighted bound over components, or one pathwise draw.
MIXTURE_ESTIMATORS = ("marginal", "stratified", "pathwise")
KL_WARMUP_EPOCHS = 4.0  # --kl-warmup's default for the ELBO


def kl_warmup_default(importance_weighted: bool, elbo_epochs: float = KL_WARMUP_EPOCHS) -> float:
    """--kl-warmup's default: none for the importance-weighted bounds, whose KL weight is fixed
    at 1, else `elbo_epochs`."""
    return 0.0 if importance_weighted else elbo_epochs


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
    # bf16 trains 1.4-1.9x faster on a CPU with bf16 units and scores the same (benchmarks/README.md,
    # "bf16 on the CPU"); on the H100s measured the launch-bound step ran faster in fp32.
    precision: str = setting(
        "auto",
        "the networks' arithmetic in training: auto (default; bf16 on a CPU with bf16 units, AVX512_BF16 or"
        " AMX, else fp32), fp32, or bf16 (autocast; the bounds, optimizer and weights stay fp32); config.json"
        " records what the run used",
        choices=PRECISIONS,
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
            check_positive(self, name)
        check_choice(self, "mixture_estimator", MIXTURE_ESTIMATORS)
        check_choice(self, "optimizer", OPTIMIZERS)
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
        check_choice(self, "device", DEVICES)
        check_choice(self, "precision", PRECISIONS)
        check_choice(self, "lr_schedule", LR_SCHEDULES)
        return self

    def validate_objective(self, model: ModelConfig) -> None:
        """The objective's checks that need the model too."""
        if self.free_bits and model.levels > 1:
            raise VaekitError(
                f"--free-bits is a per-dimension KL floor of a single latent; with --levels {model.levels} use "
                "--kl-warmup (it covers every group) or --beta instead"
            )
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
