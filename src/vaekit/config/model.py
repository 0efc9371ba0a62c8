"""The model's settings (`ModelConfig`): enough to rebuild the network and its distributions."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vaekit.config import registry
from vaekit.config.checks import check_choice, check_positive
from vaekit.config.settings import internal, setting
from vaekit.errors import VaekitError

IMAGE_SIZES = (28, 32, 64)
MIXTURE_WEIGHTS = ("learned", "equal")
BLOCKS = ("plain", "gated")  # the built-in networks' conv blocks (networks.conv_block)
MAX_LEVELS = 7  # one group at 4x4, 8x8 and 16x16 in turn (ladder.group_resolutions), two of each at most


# A group whose KL averages below this many nats per image carries (almost) nothing: "inactive".
ACTIVE_GROUP_KL = 0.1


def group_names(levels: int) -> list[str]:
    """The latent groups' names, top first: z1 for a single level; z3, z2, z1 for three (z1 nearest x)."""
    return [f"z{level}" for level in range(levels, 0, -1)]


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
    components: int = setting(
        1, "mixture components K of q(z|x) (of the top group's with --levels >= 2)"
    )  # K=1: ordinary
    # 1 is the single-level model; L >= 2 a top-down hierarchy (models/ladder.py) whose top group
    # has latent_size dims and whose L-1 lower groups are spatial maps (group_resolutions).
    levels: int = setting(
        1,
        "latent groups L (default {default}); L >= 2 is a top-down hierarchy: --latent-size is the top group's size, "
        "the lower groups are spatial maps",
        metavar="L",
    )
    group_channels: int = setting(8, "channels of each lower group's latent map with --levels >= 2 (default {default})")
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
        """Whether the run has a user's own encoder or decoder instead of the built-in networks."""
        return self.custom_encoder is not None or self.custom_decoder is not None

    @property
    def padded_size(self) -> int:
        """The network's input size for this image size (`padded_size`): 32 for 28-pixel data."""
        return padded_size(self.image_size)

    def validate(self) -> ModelConfig:
        """Raises VaekitError naming the first bad setting; returns self, unchanged."""
        for name in ("latent_size", "width", "components", "prior_components", "logistic_mixtures", "levels"):
            check_positive(self, name)
        if self.levels > MAX_LEVELS:
            raise VaekitError(f"--levels {self.levels} is more than vaekit builds; use 1 to {MAX_LEVELS}")
        if self.levels > 1:
            check_positive(self, "group_channels")
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
        check_choice(self, "blocks", BLOCKS)
        check_choice(self, "mixture_weights", MIXTURE_WEIGHTS)
        check_choice(self, "prior", tuple(registry.priors()))
        check_choice(self, "likelihood", tuple(registry.likelihoods()))
        check_choice(self, "gaussian_variance", ("pixel", "global"))
        if not self.logvar_min < self.logvar_max:
            raise VaekitError("logvar_min must be below logvar_max")
        return self
