"""What the loaders share with the user's machine: the cache folder and one-line warnings and error causes."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir(name: str) -> Path:
    """vaekit's cache folder for `name`: $XDG_CACHE_HOME/vaekit/NAME, by default ~/.cache/vaekit/NAME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vaekit" / name


def warn(message: str) -> None:
    """Prints `message` to stderr as one `vaekit: warning:` line."""
    print(f"vaekit: warning: {message}", file=sys.stderr, flush=True)


def one_line(e: BaseException) -> str:
    """The first line of an exception's message, or its class name when the message is empty."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
