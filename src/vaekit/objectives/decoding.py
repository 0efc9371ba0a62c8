"""log p(x|z) for many z at once, without gradients, as the importance-sampled bounds need it.

On a CPU, pieces of the batch decode side by side on single-threaded workers; the pieces do not
depend on the thread count, so neither do the numbers.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

# Decoded images per piece in decoded_log_prob. On the 2-core CPU, 100-400 image pieces on
# single-threaded workers ran 1.37-1.65x the rate of one 2,000-image call on both threads
# (benchmarks/README.md, eval_nll.py); the piece size, not the thread count, fixes the numbers.
CPU_PIECE_IMAGES = 200


@functools.cache
def _single_thread_workers(workers: int) -> ThreadPoolExecutor:
    # Intra-op threads are per thread: each worker runs its ops on its own core.
    return ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,), thread_name_prefix="decode")


def repeat_context(context: list[torch.Tensor], times: int) -> list[torch.Tensor]:
    """Each bottom-up activation (B, ...) tiled `times` times along the batch, (times*B, ...): the
    order of latents (times, B, D) flattened."""
    return [c.repeat(times, *([1] * (c.dim() - 1))) for c in context]


def nll_chunk(device: torch.device) -> int:
    """Decoded images per call when estimating log p(x): on the 2-core CPU we measured, 2048
    ran 1.16x faster than 4096 (cache); a GPU wants large calls."""
    return 16384 if device.type == "cuda" else 2048


def decoded_log_prob(model: Any, z: torch.Tensor, target: torch.Tensor, context: list | None = None) -> torch.Tensor:
    """model.decode(z).log_prob(target) for z (S, B, D): (S, B), without gradients.

    With `context` (a hierarchy's bottom-up activations of the B images, `encode_with_context`)
    the lower groups are drawn from their posteriors and the result is the part of each
    importance weight below the top group: log p(x | z) + sum_l [log p(z_l | z_>l) - log q(z_l | z_>l, x)].
    Their noise is drawn here, before the pieces are handed out, so the numbers do not depend
    on which worker runs which piece.

    On a CPU, z is decoded in pieces of about CPU_PIECE_IMAGES images (whole samples of all B
    images), side by side on one single-threaded worker per intra-op thread. The pieces do not
    depend on the thread count, so neither do the numbers. Elsewhere: one call.
    """
    split = max(1, CPU_PIECE_IMAGES // z.shape[1]) if z.device.type == "cpu" else z.shape[0]
    pieces = z.split(split)
    noises = [model.decoder.noise(p.shape[0] * p.shape[1], p.device) if context else None for p in pieces]
    inference = torch.is_inference_mode_enabled()

    def piece_log_prob(piece: torch.Tensor, noise: list | None) -> torch.Tensor:
        # Grad and inference modes are thread-local: the worker takes the caller's.
        with torch.inference_mode(inference), torch.no_grad():
            if not context:
                return model.decode(piece).log_prob(target)
            px, terms = model.decode_groups(
                piece, repeat_context(context, piece.shape[0]), noise=noise
            )  # (s, B), (s, B, L-1, 3)
            return px.log_prob(target) + (terms[..., 2] - terms[..., 1]).sum(-1)

    threads = torch.get_num_threads()
    if z.device.type != "cpu" or threads == 1 or len(pieces) == 1:
        return torch.cat([piece_log_prob(p, n) for p, n in zip(pieces, noises)])
    return torch.cat(list(_single_thread_workers(threads).map(piece_log_prob, pieces, noises)))
