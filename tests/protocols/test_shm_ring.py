"""The request ring's layout: any header bytes give a checked header or RingError, any slot
bytes give a bounded copy; nothing else is ever raised."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import shm_ring as r

SIZE = r.HEADER_SIZE + 3 * r.SLOT_SIZE


def header(count=3, produced=0, consumed=0, magic=r.MAGIC, version=r.VERSION, slot_size=r.SLOT_SIZE) -> bytearray:
    buf = bytearray(SIZE)
    struct.pack_into("<IHHIII", buf, 0, magic, version, count, slot_size, produced & 0xFFFF_FFFF, consumed)
    return buf


def test_write_then_read_header_round_trips():
    buf = bytearray(SIZE)
    r.write_header(buf, 3, 0xFFFF_FFFF + 2, 0xFFFF_FFFF)  # free-running indices wrap
    h = r.read_header(buf, SIZE)
    assert (h.slot_count, h.produced, h.consumed, h.pending) == (3, 1, 0xFFFF_FFFF, 2)
    assert h.slot_offset(0xFFFF_FFFF) == r.HEADER_SIZE + (0xFFFF_FFFF % 3) * r.SLOT_SIZE


@pytest.mark.parametrize(("buf", "size", "why"), [
    (header(magic=0x12345678), SIZE, "expected"),
    (header(version=2), SIZE, "expected"),
    (header(slot_size=4096), SIZE, "slot size"),
    (header(count=0), SIZE, "ring slots"),
    (header(count=4), SIZE, "ring slots"),  # a fourth slot would run past the dataspace
    (header(count=r.MAX_SLOTS + 1), 1 << 30, "ring slots"),
    (header(produced=4, consumed=0), SIZE, "pending"),
    (header(produced=0, consumed=1), SIZE, "pending"),  # a consumer ahead of the producer: 2^32 - 1 pending
    (bytearray(10), SIZE, "ring header"),
])
def test_a_header_that_does_not_hold_is_refused(buf, size, why):
    with pytest.raises(r.RingError, match=why):
        r.read_header(buf, size)


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=80), st.integers(0, 1 << 24))
def test_any_header_bytes_give_a_checked_header_or_ring_error(data, size):
    try:
        h = r.read_header(data, size)
    except r.RingError:
        return
    assert 1 <= h.slot_count <= r.MAX_SLOTS
    assert r.HEADER_SIZE + h.slot_count * r.SLOT_SIZE <= size
    assert h.pending <= h.slot_count
    for k in range(h.pending):  # every slot a pending request names lies inside the dataspace
        assert h.slot_offset(h.consumed + k) + r.SLOT_SIZE <= size


@settings(max_examples=200)
@given(st.integers(0, 0xFFFF_FFFF), st.integers(0, 0xFFFF_FFFF), st.binary(min_size=4, max_size=64))
def test_any_slot_length_gives_a_bounded_copy(consumed, length, tail):
    buf = header(count=3, produced=consumed + 1, consumed=consumed)
    h = r.read_header(buf, SIZE)
    offset = h.slot_offset(consumed)
    struct.pack_into("<I", buf, offset, length)
    buf[offset + 4:offset + 4 + len(tail)] = tail
    frame = r.read_request(buf, h, consumed)
    assert isinstance(frame, bytes)
    assert frame == (b"" if length > r.SLOT_SIZE - 4 else bytes(buf[offset + 4:offset + 4 + length]))


def test_a_response_that_does_not_fit_its_slot_leaves_length_zero():
    buf = header()
    offset = r.HEADER_SIZE
    assert r.write_frame(buf, offset, [b"abc", b"de"]) is True
    assert bytes(r.read_response(buf, offset)) == b"abcde"
    assert r.write_frame(buf, offset, [b"x" * r.SLOT_SIZE]) is False
    assert bytes(r.read_response(buf, offset)) == b""
    struct.pack_into("<I", buf, offset, r.SLOT_SIZE)
    with pytest.raises(r.RingError, match="runs past"):
        r.read_response(buf, offset)
