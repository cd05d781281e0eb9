"""The header of a safetensors file, read without torch and without trusting the file.

A safetensors file is an 8-byte little-endian header length, a JSON table (tensor names, dtypes, shapes,
offsets, and an optional ``__metadata__`` of strings), then the raw tensor bytes. Nothing is executed.
"""

from __future__ import annotations

import json
import stat
import struct
from pathlib import Path

#: largest header accepted (a model card's metadata is a few kB)
MAX_HEADER_BYTES = 100 * 2**20


class NotSafetensors(ValueError):
    """The bytes are not a safetensors file; the message says why, without naming the file."""


def _header_length(head: bytes, size: int) -> int:
    if len(head) < 8:
        raise NotSafetensors("is too short to be a safetensors file")
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or n > min(size - 8, MAX_HEADER_BYTES):
        raise NotSafetensors("is not a safetensors file (bad header length)")
    return n


def _refuse_pickles(head: bytes, size: int) -> None:
    # the first byte of a safetensors file may be 0x80 (a header of 128 + 256 k bytes): a pickle (0x80) or
    # a zip archive (PK, torch.save's format) is recognised only when no JSON table follows
    looks_safetensors = len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8
    if not looks_safetensors and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise NotSafetensors("is a pickled PyTorch checkpoint; only safetensors weights are loaded, "
                             "because unpickling can run arbitrary code")


def parse_header(payload: bytes) -> dict:
    """The JSON table of a safetensors file held in memory (at least its header bytes)."""
    _refuse_pickles(payload[:9], len(payload))
    n = _header_length(payload[:8], len(payload))
    return _table(payload[8:8 + n])


def read_header(path) -> dict:
    """The JSON table of a safetensors file on disk, reading only its header."""
    path = Path(path)
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise NotSafetensors("is not a regular file (a pipe or a device); not read")
    size = info.st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
        _refuse_pickles(head, size)
        n = _header_length(head, size)
        fh.seek(8)
        return _table(fh.read(n))


def _table(raw: bytes) -> dict:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise NotSafetensors("is not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise NotSafetensors("is not a safetensors file (header is not a table)")
    return header


def metadata(header: dict) -> dict[str, str]:
    """The ``__metadata__`` strings of a header (empty when absent or malformed)."""
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}
