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

from protocols.layout import REST, U32, DecodeError, Field, Layout, Tagged
from protocols.status import decode_status, encode_status

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
        return _REQUEST.encode(self.op, self)


#: The request layouts, one per op (``protocols.layout``).
_REQUEST = Tagged({
    Op.CONNECT: Layout((Field("rest", text="strict"),), ("endpoint",)),
    Op.SEND: Layout((REST,), ("data",)),
    Op.RECV: Layout((U32, U32), ("max_bytes", "timeout_ms")),
    Op.CLOSE: Layout((), ()),
})


def decode_request(raw: bytes) -> Request | None:
    """None for anything malformed (any bytes: never an exception)."""
    try:
        op, fields = _REQUEST.decode(raw)
    except DecodeError:
        return None
    if op == Op.SEND and len(fields["data"]) > MAX_IO:
        return None
    if op == Op.RECV:
        fields["max_bytes"] = min(fields["max_bytes"], MAX_IO)
    return Request(Op(op), **fields)


def encode_response(status: Status, data: bytes = b"") -> bytes:
    return encode_status(status, data)


def decode_response(raw: bytes) -> tuple[Status, bytes]:
    """(status, payload); an empty or unknown status byte reads as BAD_REQUEST."""
    return decode_status(raw, Status, Status.BAD_REQUEST)
