"""Files that are never half-written: written beside their target, flushed, then renamed over it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Calls `write(tmp)` for a temporary file next to `path`, then renames it over `path`.

    A reader (or a process killed at any moment) sees the old file or the new one, never a mix;
    a failed write leaves the old file and no temporary one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fsync(tmp)  # the rename must not reach the disk before the data does
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide runs and reports from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes `data` to `path` atomically (see `atomic_write`); returns the path."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Writes `text`, UTF-8 encoded, to `path` atomically (see `atomic_write`); returns the path."""
    return atomic_write_bytes(path, text.encode())


def fsync(path: str | os.PathLike[str]) -> None:
    """Flushes a file, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
