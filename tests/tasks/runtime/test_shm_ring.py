"""The request ring's service step against honest and hostile clients (in-process: the
client's ``ShmClient`` and the server's ``shm_calls`` share one buffer as the dataspace)."""
from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_model.abi import Err
from protocols import shm_ring as r
from tasks.runtime.memory import Region
from tasks.runtime.shm import RING_PROTO, SHM_PROTO, ShmClient, ShmError, ShmPeer, handle_ring_call, shm_calls

LABEL = 16


def msg(proto: int, *words: int):
    return SimpleNamespace(proto=proto, label=LABEL, word=lambda i: words[i], has_words=lambda n: len(words) >= n)


class Loop:
    """A client and a server on one dataspace; ``call`` runs the server's handler directly."""

    def __init__(self, slots: int = 3, handle=None, ring: bool = True):
        size = r.HEADER_SIZE + slots * r.SLOT_SIZE
        self.region = Region(0x1000, size, True, bytearray(size))  # type: ignore[arg-type]  # a buffer like a mapping
        self.seen: list[bytes] = []
        self.handle = handle or (lambda peer, frame: [b"re:", frame])
        self.peers = {LABEL: ShmPeer("c", LABEL, self.region)}
        self.server = shm_calls(self.peers, self._handle, ring=ring)
        self.client = ShmClient(self, 1, 2)

    def _handle(self, peer, frame):
        self.seen.append(frame)
        return self.handle(peer, frame)

    def map_dataspace(self, shm, writable):
        return self.region

    def call(self, gate, proto, *words, timeout_us=None):
        reply = self.server(msg(proto, *words))
        return SimpleNamespace(ok=True, status=reply.status, word=lambda i: reply.words[i],
                               has_words=lambda n: len(reply.words) >= n)


def frames(*payloads: bytes):
    return [([p], len(p)) for p in payloads]


def test_every_request_gets_exactly_one_response_in_order_one_signal_per_ring_full():
    loop = Loop(slots=3)
    calls = []
    original = loop.call
    loop.call = lambda *a, **k: calls.append(a[1]) or original(*a, **k)
    payloads = [bytes([i]) * (i + 1) for i in range(7)]
    assert loop.client.transact_many(frames(*payloads)) == [b"re:" + p for p in payloads]
    assert loop.seen == payloads  # each request handled once, in order
    assert calls == [RING_PROTO] * 3  # 7 requests, 3 slots: three signals
    h = r.read_header(loop.region.map, loop.region.size)
    assert h.produced == h.consumed == 7


def test_a_server_without_the_ring_refuses_the_signal():
    loop = Loop(ring=False)
    try:
        loop.client.transact_many(frames(b"a"))
    except ShmError as exc:
        assert exc.error == -Err.EBADPROTO
    else:
        raise AssertionError("the ring signal was accepted by a server without a ring")
    assert loop.seen == []


def hostile(loop: Loop, **fields) -> tuple[int, tuple[int, ...]]:
    values = {"magic": r.MAGIC, "version": r.VERSION, "count": 3, "slot_size": r.SLOT_SIZE,
              "produced": 0, "consumed": 0, **fields}
    buf: Any = loop.region.map
    struct.pack_into("<IHHIII", buf, 0, values["magic"], values["version"], values["count"],
                     values["slot_size"], values["produced"], values["consumed"])
    return handle_ring_call(loop.peers, msg(RING_PROTO), loop._handle)


def test_indices_out_of_range_are_refused_with_nothing_answered():
    for fields in ({"produced": 4}, {"consumed": 1}, {"count": 4}, {"count": 0}, {"slot_size": 8},
                   {"magic": 0}, {"produced": 0x8000_0000}):
        loop = Loop(slots=3)
        assert hostile(loop, **fields) == (-int(Err.EINVAL), ())
        assert loop.seen == []


def test_wrap_around_indices_are_served_modulo_the_slot_count():
    loop = Loop(slots=3)
    start = 0xFFFF_FFFF  # the next three requests are indices 2^32-1, 0, 1 (mod 2^32)
    h = r.RingHeader(3, 0, start)
    for k, payload in enumerate((b"a", b"b", b"c")):
        r.write_frame(loop.region.map, h.slot_offset(start + k), [payload])
    assert hostile(loop, produced=(start + 3) & 0xFFFF_FFFF, consumed=start) == (0, (3,))
    assert loop.seen == [b"a", b"b", b"c"]
    assert r.read_header(loop.region.map, loop.region.size).consumed == 2


def test_a_slot_length_that_lies_is_answered_as_an_empty_frame():
    loop = Loop(slots=2)
    struct.pack_into("<I", loop.region.map, r.HEADER_SIZE, 0xFFFF_FFFF)
    r.write_frame(loop.region.map, r.HEADER_SIZE + r.SLOT_SIZE, [b"ok"])
    assert hostile(loop, count=2, produced=2) == (0, (2,))
    assert loop.seen == [b"", b"ok"]
    assert bytes(r.read_response(loop.region.map, r.HEADER_SIZE)) == b"re:"


def test_slots_changing_while_the_service_reads_do_not_change_what_it_validated():
    loop = Loop(slots=3)

    def rewriting(peer, frame):
        before = bytes(frame)
        buf = loop.region.map  # the client rewrites every slot (and the header) mid-request
        buf[r.HEADER_SIZE:] = b"\xff" * (len(buf) - r.HEADER_SIZE)
        struct.pack_into("<II", buf, 12, 0, 0)
        assert frame == before  # the service works on its own copy
        return [b"re:", frame]

    loop.handle = rewriting
    for k, payload in enumerate((b"one", b"two", b"three")):
        r.write_frame(loop.region.map, r.HEADER_SIZE + k * r.SLOT_SIZE, [payload])
    status, (answered,) = hostile(loop, produced=3)
    assert (status, answered) == (0, 3)  # the header was read once: all three are answered
    assert loop.seen[0] == b"one"
    assert all(frame == b"" for frame in loop.seen[1:])  # later slots: what the client left there


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=r.HEADER_SIZE, max_size=r.HEADER_SIZE), st.lists(st.binary(max_size=40), max_size=3),
       st.binary(max_size=8))
def test_any_ring_bytes_give_a_status_and_at_most_one_answer_per_request(head, slots, junk):
    loop = Loop(slots=3)
    buf = loop.region.map
    buf[:r.HEADER_SIZE] = head
    for k, blob in enumerate(slots):
        offset = r.HEADER_SIZE + k * r.SLOT_SIZE
        buf[offset:offset + len(blob)] = blob
    buf[r.HEADER_SIZE + 8:r.HEADER_SIZE + 8 + len(junk)] = junk
    status, words = handle_ring_call(loop.peers, msg(RING_PROTO), loop._handle)
    if status < 0:
        assert status == -int(Err.EINVAL) and loop.seen == []
    else:
        assert words == (len(loop.seen),) and len(loop.seen) <= 3


def test_the_single_request_call_still_works_beside_the_ring():
    loop = Loop(slots=3)
    assert loop.client.transact(b"plain") == b"re:plain"
    assert loop.client.transact_many(frames(b"x", b"y")) == [b"re:x", b"re:y"]
    assert loop.client.transact(b"again") == b"re:again"
    assert loop.server(msg(SHM_PROTO, loop.region.size)).status == -int(Err.EMSGTOOLONG)
