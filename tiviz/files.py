"""Small file helpers shared by the data loaders, the table writer, checkpoints and the result writers: a file's
checksum, flushing to disk, and JSON for numpy values."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks: recorded in provenance so results name the exact data they
    came from, and in checkpoint manifests so a damaged file is caught."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync(path: str | Path, *, required: bool = False) -> None:
    """Flush a file's (or a folder's, after a rename) data to disk.

    Args:
        required: False (default) makes it a no-op where the OS cannot (some filesystems open no folders; the
            rename is still atomic); True lets the error through, for files whose durability is the point.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if required:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if required:
            raise
    finally:
        os.close(fd)


def json_default(o: Any) -> Any:
    """`json.dumps(default=...)` for what results hold besides plain types: numpy scalars as Python numbers,
    anything else as its string."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    return str(o)
