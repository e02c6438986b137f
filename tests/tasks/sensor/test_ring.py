"""The sensor's readings ring: published in order, overruns and torn slots counted as lost, never as data."""
from __future__ import annotations

from protocols import sensor_ring as ring
from tasks.sensor.task import sample


def make(slots: int = 4) -> bytearray:
    buf = bytearray(ring.HEADER.size + slots * ring.SLOT.size)
    ring.init(buf, slots)
    return buf


def test_readings_arrive_once_in_order():
    buf, reader = make(), ring.Reader()
    for seq in range(3):
        ring.write(buf, ring.Reading(seq, 1000 + seq, sample(seq)))
    assert [r.seq for r in reader.take(bytes(buf))] == [0, 1, 2]
    assert reader.take(bytes(buf)) == []
    ring.write(buf, ring.Reading(3, 1003, 5))
    assert [(r.seq, r.value_milli) for r in reader.take(bytes(buf))] == [(3, 5)]
    assert reader.lost == 0


def test_a_slow_reader_loses_the_oldest_and_is_told():
    buf, reader = make(4), ring.Reader()
    for seq in range(10):
        ring.write(buf, ring.Reading(seq, seq, seq))
    assert [r.seq for r in reader.take(bytes(buf))] == [6, 7, 8, 9]
    assert reader.lost == 6


def test_a_torn_or_forged_slot_is_lost_not_read():
    buf, reader = make(4), ring.Reader()
    for seq in range(2):
        ring.write(buf, ring.Reading(seq, seq, seq))
    buf[ring.HEADER.size + ring.SLOT.size + 16] ^= 0xFF  # corrupt reading 1's value
    assert [r.seq for r in reader.take(bytes(buf))] == [0]
    assert reader.lost == 1


def test_garbage_headers_give_nothing():
    reader = ring.Reader()
    assert reader.take(b"") == [] and reader.take(bytes(64)) == []
    bad = bytearray(make(4))
    ring.HEADER.pack_into(bad, 0, ring.MAGIC, 1 << 30, 5)  # more slots than the buffer holds
    assert reader.take(bytes(bad)) == []


def test_a_restarted_device_is_followed():
    buf, reader = make(4), ring.Reader()
    for seq in range(3):
        ring.write(buf, ring.Reading(seq, seq, seq))
    reader.take(bytes(buf))
    ring.init(buf, 4)
    ring.write(buf, ring.Reading(0, 9, 9))
    assert [r.time_us for r in reader.take(bytes(buf))] == [9]


def test_the_simulated_device_is_deterministic_and_plausible():
    values = [sample(i) for i in range(500)]
    assert values == [sample(i) for i in range(500)]
    assert all(19_000 < v < 24_000 for v in values)
