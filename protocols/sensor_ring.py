"""The sensor's shared-memory ring (sans-I/O): how readings sit in the dataspace the sensor shares.

One writer (the sensor), one reader (the gateway), the way a device's DMA ring and its interrupt
work: the writer fills the slot for reading ``n`` and then publishes ``written = n + 1`` in the
header; after each reading (or a burst) it triggers the IRQ. The reader, woken by the IRQ, reads
``written`` and takes every reading it has not seen that is still in the ring. A reader that
falls more than ``slots`` behind loses the oldest readings and is told how many (``lost``).

Layout (little-endian)::

    0   4  magic "SNS1"
    4   4  slots
    8   8  written: readings published so far
    16  slots x 32 bytes: seq u64 | time_us u64 (Unix) | value i64 (milli-units) | channel u32 | crc u32

Every field the reader takes is checked: a slot whose ``seq`` is not the one expected (being
rewritten, or garbage) counts as lost, never as data.
"""
from __future__ import annotations

import dataclasses
import struct
import zlib

MAGIC = b"SNS1"
HEADER = struct.Struct("<4sIQ")
SLOT = struct.Struct("<QQqII")
SLOT_BODY = struct.Struct("<QQqI")


@dataclasses.dataclass(frozen=True)
class Reading:
    seq: int
    time_us: int
    value_milli: int
    channel: int = 0

    def as_json(self) -> dict:
        return {"seq": self.seq, "t_us": self.time_us, "value": self.value_milli / 1000, "channel": self.channel}


def slots_for(size: int) -> int:
    return max(0, (size - HEADER.size) // SLOT.size)


def init(buf: bytearray | memoryview, slots: int) -> None:
    HEADER.pack_into(buf, 0, MAGIC, slots, 0)


def write(buf, reading: Reading) -> None:
    """Fill the slot, then publish (the header last)."""
    magic, slots, written = HEADER.unpack_from(buf, 0)
    body = SLOT_BODY.pack(reading.seq, reading.time_us, reading.value_milli, reading.channel)
    SLOT.pack_into(buf, HEADER.size + (reading.seq % slots) * SLOT.size, reading.seq, reading.time_us,
                   reading.value_milli, reading.channel, zlib.crc32(body))
    HEADER.pack_into(buf, 0, magic, slots, max(written, reading.seq + 1))


@dataclasses.dataclass
class Reader:
    """The consumer's side: remembers what it has taken."""

    next_seq: int = 0
    lost: int = 0

    def take(self, buf: bytes) -> list[Reading]:
        """Every new reading in ``buf`` (a copy of the dataspace), oldest first."""
        if len(buf) < HEADER.size:
            return []
        magic, slots, written = HEADER.unpack_from(buf, 0)
        if magic != MAGIC or slots == 0 or HEADER.size + slots * SLOT.size > len(buf):
            return []
        if written < self.next_seq:  # the device restarted and counts from 0 again
            self.next_seq = 0
        start = max(self.next_seq, written - slots)
        self.lost += start - self.next_seq
        out = []
        for seq in range(start, written):
            seq_in, t, value, channel, crc = SLOT.unpack_from(buf, HEADER.size + (seq % slots) * SLOT.size)
            if seq_in != seq or zlib.crc32(SLOT_BODY.pack(seq_in, t, value, channel)) != crc:
                self.lost += 1
                continue
            out.append(Reading(seq, t, value, channel))
        self.next_seq = written
        return out
