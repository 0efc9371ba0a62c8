"""The hierarchy's networks (`--levels L` >= 2): a deterministic bottom-up pass over x, then a
top-down pass in which each latent group's prior p(z_l | z_>l) and posterior q(z_l | z_>l, x)
share the top-down state (Ladder VAE, Sønderby et al. 2016; NVAE, Vahdat & Kautz 2020;
VDVAE, Child 2021).

The groups, top first: z_L, a vector of `latent_size` dims, whose posterior q(z_L | x) is the
bottom-up pass's mixture (as the single-level encoder's) and whose prior is the run's
registered prior (N(0, I) or the VampPrior); then z_{L-1} .. z_1, spatial maps of
`group_channels` channels at the resolutions `group_resolutions` gives, each a diagonal Gaussian
whose prior comes from the state above it and whose posterior is a shift and scale of that
prior computed from the state and the bottom-up activation at its resolution (NVAE's relative
parameterisation: it starts as the prior, so each group's KL starts at zero).

The top-down network is the single-level decoder's stack of transposed convolutions with a
`GroupCell` after the block that reaches each group's resolution; a cell draws its group and
adds it back into the state through a convolution and a residual block.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from vaekit.config import ModelConfig, block_widths
from vaekit.models.networks import conv_block, down_block, up_block

# Where the lower groups go, in turn: a quarter, an eighth and half the network's size (8x8,
# 4x4 and 16x16 for 32-pixel inputs); the L-1 groups take the first L-1 of these, twice round.
_RESOLUTION_ORDER = (4, 8, 2)


def group_resolutions(levels: int, size: int) -> list[int]:
    """The spatial sizes of the L-1 lower groups of a `size`-pixel network, top-down (coarsest first)."""
    picks = [size // _RESOLUTION_ORDER[i % len(_RESOLUTION_ORDER)] for i in range(levels - 1)]
    return sorted(picks)


def _bottom_up_widths(size: int, width: int) -> dict[int, int]:
    """Channels of the bottom-up activation at each resolution: the single-level encoder's."""
    return {size >> (i + 1): c for i, c in enumerate(block_widths(size, width))}


def _top_down_widths(size: int, width: int) -> dict[int, int]:
    """Channels of the top-down state at each resolution: the single-level decoder's (width at 4x4)."""
    return {4 << i: c for i, c in enumerate(block_widths(size, width)[::-1])}


class BottomUp(nn.Module):
    """x (B, C, S, S) -> the top group's (loc, logvar, logits) with shapes (B, K, D), (B, K, D),
    (B, K), followed by the bottom-up activation at each lower group's resolution, top-down."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        size, width = config.padded_size, config.width
        widths = block_widths(size, width)
        self.latent_size, self.components = config.latent_size, config.components
        self.resolutions = group_resolutions(config.levels, size)
        ins = [config.channels] + widths
        self.body = nn.ModuleList(down_block(c_in, c_out, config.blocks) for c_in, c_out in zip(ins, widths))
        self.loc_head = nn.Conv2d(widths[-1], config.components * config.latent_size, 2)
        self.logvar_head = nn.Conv2d(widths[-1], config.components * config.latent_size, 2)
        self.logits_head = nn.Conv2d(widths[-1], config.components, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(loc, logvar, logits, *context): the top posterior's parameters, then the activations
        (B, C_r, r, r) at each of `resolutions`."""
        h, by_size = x, {}
        for block in self.body:
            h = block(h)  # halves the size
            by_size[h.shape[-1]] = h
        shape = (x.shape[0], self.components, self.latent_size)
        loc = self.loc_head(h).reshape(shape)  # (B, KD, 1, 1) -> (B, K, D)
        logvar = self.logvar_head(h).reshape(shape)  # (B, K, D)
        logits = self.logits_head(h).reshape(shape[:2])  # (B, K)
        return (loc, logvar, logits, *(by_size[r] for r in self.resolutions))


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (an autocast convolution's output) as fp32; fp32 and fp64 as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class GroupCell(nn.Module):
    """One lower group z_l at one resolution r, drawn from the top-down state h (N, C, r, r).

    prior p(z_l | z_>l) = N(loc_p, exp(logvar_p)) from h; posterior q(z_l | z_>l, x) =
    N(loc_p + dloc, exp(logvar_p + dlogvar)) from h and the bottom-up activation; log-variances
    clamped to the config's bounds as the top group's are. The drawn z_l enters the state through
    a 3x3 convolution, then a residual block refines it.
    """

    def __init__(self, state: int, context: int, latent: int, blocks: str, logvar_bounds: tuple[float, float]) -> None:
        super().__init__()
        self.prior = nn.Conv2d(state, 2 * latent, 3, padding=1)
        self.posterior = nn.Conv2d(state + context, 2 * latent, 3, padding=1)
        # q starts as p: the group's KL is zero at the first step and grows as the data ask.
        nn.init.zeros_(self.posterior.weight)
        nn.init.zeros_(self.posterior.bias)  # type: ignore[arg-type]  # a Conv2d with bias=True
        self.merge = nn.Conv2d(latent, state, 3, padding=1)
        self.residual = conv_block(nn.Conv2d, state, state, blocks, 3, 1, 1)
        self.logvar_bounds = logvar_bounds

    def forward(
        self,
        h: torch.Tensor,
        context: torch.Tensor | None,
        temperature: float = 1.0,
        use_mean: bool = False,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next state, and (N, 3): KL(q || p) in closed form, log q(z_l) and log p(z_l) of the
        draw, each summed over the group's dims (zeros without context: a draw from the prior,
        scaled by `temperature`). `use_mean` takes the mean instead of drawing; `noise`, standard
        normal (N, c, r, r), is the draw's (fresh from the global generator if None)."""
        lo, hi = self.logvar_bounds
        p_loc, p_logvar = _full_precision(self.prior(h)).chunk(2, dim=1)  # (N, c, r, r) each, fp32 under autocast
        p = Normal(p_loc, torch.exp(0.5 * p_logvar.clamp(lo, hi)), validate_args=False)
        # Contiguous noise whatever p_loc's memory format: randn_like would fill a channels_last
        # tensor in memory order, a different draw from the same seed than the contiguous model's.
        if noise is None:
            noise = torch.randn(p_loc.shape, dtype=p_loc.dtype, device=p_loc.device)
        eps = noise.to(p_loc.dtype)
        if context is None:
            z = p.loc if use_mean else p.loc + temperature * p.scale * eps
            terms = p_loc.new_zeros(h.shape[0], 3)
        else:
            shift = self.posterior(torch.cat([h, context.to(h.dtype)], dim=1))
            d_loc, d_logvar = _full_precision(shift).chunk(2, dim=1)
            q = Normal(p_loc + d_loc, torch.exp(0.5 * (p_logvar + d_logvar).clamp(lo, hi)), validate_args=False)
            z = q.loc if use_mean else q.loc + q.scale * eps
            terms = torch.stack(
                [
                    kl_divergence(q, p).flatten(1).sum(1),
                    q.log_prob(z).flatten(1).sum(1),
                    p.log_prob(z).flatten(1).sum(1),
                ],
                dim=1,
            )  # (N, 3)
        h = h + self.merge(z)
        return h + self.residual(h), terms


class TopDown(nn.Module):
    """(z_L (N, D), *context) -> (likelihood parameters (N, C', S, S), group terms (N, L-1, 3)).

    With the bottom-up context of the same N images, each lower group is drawn from its
    posterior; without it, from its prior at `temperature` (1 samples the model, lower is
    smoother, 0 takes each prior's mean). Group terms are (KL, log q, log p) per lower group,
    top-down (`GroupCell`); zeros for prior draws.
    """

    def __init__(self, config: ModelConfig, out_channels: int) -> None:
        super().__init__()
        size, width = config.padded_size, config.width
        widths = block_widths(size, width)[::-1]  # the widest first
        state, context = _top_down_widths(size, width), _bottom_up_widths(size, width)
        self.resolutions = group_resolutions(config.levels, size)
        self.group_channels = config.group_channels
        bounds = (config.logvar_min, config.logvar_max)
        ups = [up_block(config.latent_size, widths[0], 4, 1, 0, config.blocks)]  # 1x1 -> 4x4
        ups += [up_block(c_in, c_out, 4, 2, 1, config.blocks) for c_in, c_out in zip(widths[:-1], widths[1:])]
        self.ups = nn.ModuleList(ups)
        self.cells = nn.ModuleList(
            GroupCell(state[r], context[r], config.group_channels, config.blocks, bounds) for r in self.resolutions
        )
        # the block after which each cell draws its group: ups[i] ends at resolution 4 << i
        self.after_block = [(r // 4).bit_length() - 1 for r in self.resolutions]
        self.head = nn.ConvTranspose2d(widths[-1], out_channels, 1, 1, 0)

    def noise(self, n: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Standard normal noise for every lower group of n draws, top-down: [(n, c, r, r), ...]."""
        return [torch.randn(n, self.group_channels, r, r, device=device, dtype=dtype) for r in self.resolutions]

    def forward(
        self,
        z: torch.Tensor,
        *context: torch.Tensor,
        temperature: float = 1.0,
        use_mean: bool = False,
        noise: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The likelihood's raw parameters and the lower groups' terms (see the class); `noise`
        (as `noise(N)` makes it) fixes the lower groups' draws."""
        if context and len(context) != len(self.resolutions):
            raise ValueError(f"expected {len(self.resolutions)} context tensors, got {len(context)}")
        h = z[:, :, None, None]  # (N, D, 1, 1)
        terms = []
        for i, up in enumerate(self.ups):
            h = up(h)  # (N, C_r, r, r), r = 4 << i
            for g, cell in enumerate(self.cells):
                if self.after_block[g] == i:
                    given = context[g] if context else None
                    h, t = cell(h, given, temperature, use_mean, noise[g] if noise else None)
                    terms.append(t)
        return self.head(h), torch.stack(terms, dim=1)  # (N, C', S, S), (N, L-1, 3)
