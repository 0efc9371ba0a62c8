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


def decoded_log_prob(model: Any, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """model.decode(z).log_prob(target) for z (S, B, D): (S, B), without gradients.

    On a CPU, z is decoded in pieces of about CPU_PIECE_IMAGES images (whole samples of all B
    images), side by side on one single-threaded worker per intra-op thread. The pieces do not
    depend on the thread count, so neither do the numbers. Elsewhere: one call.
    """
    if z.device.type != "cpu":
        with torch.no_grad():
            return model.decode(z).log_prob(target)
    pieces = z.split(max(1, CPU_PIECE_IMAGES // z.shape[1]))
    inference = torch.is_inference_mode_enabled()

    def piece_log_prob(piece: torch.Tensor) -> torch.Tensor:
        # Grad and inference modes are thread-local: the worker takes the caller's.
        with torch.inference_mode(inference), torch.no_grad():
            return model.decode(piece).log_prob(target)

    threads = torch.get_num_threads()
    if threads == 1 or len(pieces) == 1:
        return torch.cat([piece_log_prob(piece) for piece in pieces])
    return torch.cat(list(_single_thread_workers(threads).map(piece_log_prob, pieces)))
