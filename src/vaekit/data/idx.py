"""Reader for the IDX format used by MNIST and Fashion-MNIST (gzipped or raw).

Only the unsigned-byte type (0x08) is supported; every problem with a file is a
one-line :class:`~vaekit.errors.VaekitError` naming the file.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from vaekit.errors import VaekitError

GZIP_MAGIC = b"\x1f\x8b"
_TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}
_FIX = "re-download it or point --data-dir elsewhere"


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """Return the (decompressed) bytes of an IDX file; gzip is detected by its magic bytes."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise VaekitError(f"{name}: file not found; check the path or point --data-dir elsewhere") from None
    except OSError as e:
        raise VaekitError(
            f"{name}: cannot read file ({e.strerror or e}); check its permissions or point --data-dir elsewhere"
        ) from None
    if not raw:
        raise VaekitError(f"{name}: empty file; {_FIX}")
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise VaekitError(f"{name}: corrupt gzip stream ({reason}); {_FIX}") from None
        if not raw:
            raise VaekitError(f"{name}: empty file after decompression; {_FIX}")
    return raw


def parse_idx(data: bytes | bytearray | memoryview, name: str = "<bytes>") -> np.ndarray:
    """Parse decompressed IDX bytes into a uint8 array of the header's shape (no copy)."""
    n = len(data)
    if n < 4:
        raise VaekitError(f"{name}: truncated IDX file (only {n} bytes, no complete header); {_FIX}")
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise VaekitError(f"{name}: not an IDX file (bad magic number 0x{bytes(data[:4]).hex()}); {_FIX}")
    if type_code != 0x08:
        kind = _TYPE_NAMES.get(type_code, "unknown")
        raise VaekitError(
            f"{name}: unsupported IDX type code 0x{type_code:02x} ({kind}); only 0x08 "
            f"(unsigned byte) is supported; {_FIX}"
        )
    if not 1 <= ndim <= 4:
        raise VaekitError(f"{name}: IDX file has {ndim} dimensions (expected 1 to 4); {_FIX}")
    header = 4 + 4 * ndim
    if n < header:
        raise VaekitError(f"{name}: truncated IDX file (expected a {header}-byte header, found {n} bytes); {_FIX}")
    dims = struct.unpack(f">{ndim}I", bytes(data[4:header]))
    if any(d == 0 for d in dims):
        raise VaekitError(f"{name}: IDX file has a zero-size dimension {tuple(dims)}; {_FIX}")
    expected = header + int(np.prod(dims, dtype=np.int64))
    if n < expected:
        raise VaekitError(f"{name}: truncated IDX file (expected {expected} bytes, found {n}); {_FIX}")
    if n > expected:
        raise VaekitError(
            f"{name}: IDX file has {n - expected} trailing bytes (expected {expected} bytes, found {n}); {_FIX}"
        )
    return np.frombuffer(data, dtype=np.uint8, count=expected - header, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a gzipped or raw IDX file (type 0x08) into a writable uint8 numpy array."""
    data = bytearray(read_idx_bytes(path))  # bytearray -> writable array, so torch.from_numpy is happy
    return parse_idx(data, os.fspath(path))
