"""Atomic file writes: a temporary file in the same folder, then one rename. Readers never see half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path, write: Callable[[str], None], mode: int = 0o644) -> Path:
    """Call ``write(temporary_path)`` then move the result onto ``path`` (permissions ``mode`` less umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, mode & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def temporaries_of(path) -> list[Path]:
    """Temporary files that writes of ``path`` left behind when their process was killed."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.part"))


def atomic_write_bytes(path, payload: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(payload))
