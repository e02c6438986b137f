"""The response convention of the services built on ``tasks.runtime.shm``: ``B status | payload``.

Pure: each service's protocol module keeps its own ``Status`` enum and uses these two.
"""
from __future__ import annotations

import enum
from typing import TypeVar

E = TypeVar("E", bound=enum.IntEnum)


def encode_status(status: int, payload: bytes = b"") -> bytes:
    return bytes([status]) + payload


def decode_status(raw: bytes, statuses: type[E], bad: E) -> tuple[E, bytes]:
    """(status, payload); an empty response or an unknown status byte reads as ``bad``."""
    if not raw:
        return bad, b""
    try:
        return statuses(raw[0]), raw[1:]
    except ValueError:
        return bad, b""
