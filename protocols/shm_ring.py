"""The request ring: many request frames in a client's shared dataspace, one signal.

An extension of the WvdS shared-memory flow (``tasks.runtime.shm``; the idea is virtio's
and io_uring's queues and Heimlig's job queues): instead of one request in the request
area and one call per request, the client queues up to ``slot_count`` frames in slots,
publishes them by moving ``produced`` and signals once (IPC protocol ``RING_PROTO``); the
service answers every published request in place, in order, moves ``consumed`` past it,
and replies when all are answered. Layout of the dataspace (all integers little-endian)::

    offset 0    header (64 bytes)
        0  u32  magic "WVR1" (0x31525657)
        4  u16  version 1
        6  u16  slot_count     1..MAX_SLOTS, and the slots must fit in the dataspace
        8  u32  slot_size      must be SLOT_SIZE (a slot holds any frame up to 64 KiB + 12)
       12  u32  produced       requests published (free-running, written by the client)
       16  u32  consumed       requests answered (free-running, written by the service)
       20  44 bytes of zero
    offset 64 + i * SLOT_SIZE  slot i: u32 length | frame; request i is slot (i mod slot_count),
                               and its response replaces it in the same slot

Every word of the dataspace is written by the client, i.e. by an attacker as far as the
service is concerned. The service reads the header once per signal (one ``unpack_from``),
checks it (``RingHeader.check``: magic, version, slot count and size, the slots inside the
dataspace, at most ``slot_count`` requests pending), then for each request reads its length
once, refuses a length that runs past its slot (the request is answered as if it were an
empty frame) and copies the frame out before anything looks at it: a client that rewrites
its slots meanwhile only changes its own request. Nothing the service keeps depends on the
ring between two signals, so a lying client can hurt only its own ring.
Pure: the functions below work on any writable buffer (an ``mmap``, a ``bytearray``).
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from protocols.layout import U16, U32, DecodeError, Layout, const, pad

RING_PROTO = 0x4102  #: IPC protocol of the ring's signal (the single-request call is 0x4100)
MAGIC = 0x31525657  # "WVR1"
VERSION = 1
HEADER_SIZE = 64
SLOT_SIZE = 4 + 12 + 65536  #: u32 length + the largest frame (header, sequence, 64 KiB): 65552, 8-aligned
MAX_SLOTS = 64  #: bounds the work one signal can ask for
_MASK = 0xFFFF_FFFF

HEADER = Layout((const("u32", MAGIC), const("u16", VERSION), U16, U32, U32, U32, pad(44)),
                ("slot_count", "slot_size", "produced", "consumed"))
_LEN = struct.Struct("<I")
_CONSUMED_AT = 16


class RingError(ValueError):
    """The ring header does not hold (the signal is refused; nothing is answered)."""


@dataclass(frozen=True, slots=True)
class RingHeader:
    slot_count: int
    produced: int
    consumed: int

    @property
    def pending(self) -> int:
        return (self.produced - self.consumed) & _MASK

    def slot_offset(self, index: int) -> int:
        return HEADER_SIZE + (index % self.slot_count) * SLOT_SIZE


def slots_that_fit(size: int) -> int:
    """How many slots a dataspace of ``size`` bytes holds (capped at MAX_SLOTS)."""
    return max(0, min(MAX_SLOTS, (size - HEADER_SIZE) // SLOT_SIZE))


def read_header(buf: Any, size: int) -> RingHeader:
    """The header, checked against a dataspace of ``size`` bytes; RingError if it does not hold."""
    try:
        count, slot_size, produced, consumed = HEADER.unpack_from(buf, 0)
    except DecodeError as exc:
        raise RingError(f"ring header: {exc}") from None
    if slot_size != SLOT_SIZE:
        raise RingError(f"ring slot size {slot_size}, must be {SLOT_SIZE}")
    if not 1 <= count <= min(MAX_SLOTS, slots_that_fit(size)):
        raise RingError(f"{count} ring slots, this dataspace holds 1..{slots_that_fit(size)}")
    header = RingHeader(count, produced, consumed)
    if header.pending > count:
        raise RingError(f"{header.pending} requests pending in a ring of {count} slots")
    return header


def write_header(buf: Any, slot_count: int, produced: int, consumed: int) -> None:
    struct.pack_into("<IHHIII44x", buf, 0, MAGIC, VERSION, slot_count, SLOT_SIZE, produced & _MASK,
                     consumed & _MASK)


def set_consumed(buf: Any, consumed: int) -> None:
    _LEN.pack_into(buf, _CONSUMED_AT, consumed & _MASK)


def read_request(buf: Any, header: RingHeader, index: int) -> bytes:
    """A copy of request ``index``'s frame; a length that runs past its slot reads as ``b""``."""
    offset = header.slot_offset(index)
    (length,) = _LEN.unpack_from(buf, offset)
    if length > SLOT_SIZE - _LEN.size:
        return b""
    return bytes(buf[offset + _LEN.size:offset + _LEN.size + length])


def write_frame(buf: Any, offset: int, parts: Iterable[Any]) -> bool:
    """A frame (as buffers) into the slot at ``offset``; False (the slot gets length 0) if it does not fit."""
    pos = offset + _LEN.size
    end = offset + SLOT_SIZE
    for part in parts:
        n = len(part)
        if pos + n > end:
            _LEN.pack_into(buf, offset, 0)
            return False
        buf[pos:pos + n] = part
        pos += n
    _LEN.pack_into(buf, offset, pos - offset - _LEN.size)
    return True


def read_response(buf: Any, offset: int) -> memoryview:
    """A view of the response in the slot at ``offset`` (copy what you keep; RingError if its
    length runs past the slot)."""
    (length,) = _LEN.unpack_from(buf, offset)
    if length > SLOT_SIZE - _LEN.size:
        raise RingError(f"ring response length {length} runs past its slot")
    return memoryview(buf)[offset + _LEN.size:offset + _LEN.size + length]


__all__ = ["HEADER_SIZE", "MAX_SLOTS", "RING_PROTO", "SLOT_SIZE", "RingError", "RingHeader", "read_header",
           "read_request", "read_response", "set_consumed", "slots_that_fit", "write_frame", "write_header"]
