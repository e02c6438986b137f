"""The network proxy's wire format (sans-I/O): byte streams to allowed endpoints, over shared memory.

Request::

    B op | payload
    op 1 CONNECT  payload = "host:port" (UTF-8)
    op 2 SEND     payload = bytes to send
    op 3 RECV     payload = u32 LE max bytes | u32 LE timeout in ms
    op 4 CLOSE    payload = empty

Response::

    B status | payload (RECV: the bytes received; empty at end of stream with status CLOSED)

One stream per client at a time. A malformed request gets BAD_REQUEST, never a crash.
"""
from __future__ import annotations

import dataclasses
import enum
import struct

from tasks.runtime.status import decode_status, encode_status

MAX_IO = 60 * 1024


class Op(enum.IntEnum):
    CONNECT = 1
    SEND = 2
    RECV = 3
    CLOSE = 4


class Status(enum.IntEnum):
    OK = 0
    DENIED = 1  #: endpoint not in the image's network.connect list for this proxy
    CONNECT_FAILED = 2
    NOT_CONNECTED = 3
    TIMEOUT = 4
    CLOSED = 5  #: the peer closed the stream (RECV) / it is gone (SEND)
    BAD_REQUEST = 6
    IO_ERROR = 7


@dataclasses.dataclass(frozen=True)
class Request:
    op: Op
    endpoint: str = ""
    data: bytes = b""
    max_bytes: int = 0
    timeout_ms: int = 0

    def encode(self) -> bytes:
        if self.op is Op.CONNECT:
            return bytes([self.op]) + self.endpoint.encode()
        if self.op is Op.SEND:
            return bytes([self.op]) + self.data
        if self.op is Op.RECV:
            return bytes([self.op]) + struct.pack("<II", self.max_bytes, self.timeout_ms)
        return bytes([self.op])


def decode_request(raw: bytes) -> Request | None:
    """None for anything malformed."""
    if not raw:
        return None
    try:
        op = Op(raw[0])
    except ValueError:
        return None
    body = raw[1:]
    if op is Op.CONNECT:
        try:
            return Request(op, endpoint=body.decode())
        except UnicodeDecodeError:
            return None
    if op is Op.SEND:
        return Request(op, data=body) if len(body) <= MAX_IO else None
    if op is Op.RECV:
        if len(body) != 8:
            return None
        max_bytes, timeout_ms = struct.unpack("<II", body)
        return Request(op, max_bytes=min(max_bytes, MAX_IO), timeout_ms=timeout_ms)
    return Request(op) if not body else None


def encode_response(status: Status, data: bytes = b"") -> bytes:
    return encode_status(status, data)


def decode_response(raw: bytes) -> tuple[Status, bytes]:
    """(status, payload); an empty or unknown status byte reads as BAD_REQUEST."""
    return decode_status(raw, Status, Status.BAD_REQUEST)
