"""Request/response through a shared dataspace, signalled by IPC: the WvdS five-step flow.

(1) the client writes its request into the shared dataspace, (2) calls the
server's gate (the signal; MR[0] = request length), (3) the server processes
it, (4) writes the response into the dataspace and (5) replies (MR[0] =
response length). One request at a time per client: the call blocks until the
reply. The dataspace is split in two halves::

    offset 0          request area   (size // 2 bytes)
    offset size // 2  response area  (size // 2 bytes)

Reply status: >= 0 success; -L4_EMSGTOOLONG when a length does not fit its
area; -L4_EPERM when the server has no shared dataspace for this client.

The request ring (``protocols.shm_ring``, opt-in per server: ``shm_calls(..., ring=True)``)
uses the same dataspace differently: many requests in slots, one signal (``RING_PROTO``),
every one answered in place. Reply: >= 0 with MR[0] = requests answered; -L4_EINVAL when the
ring header does not hold (nothing is answered). Both paths write into and read from the
mapping directly (``pack_into``/slice assignment; no transient copies of a whole area).
"""
from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Sequence
from typing import Any

from kernel_model.abi import Err, IpcError
from protocols import shm_ring
from tasks.runtime.memory import Region
from tasks.runtime.serve import Reply

SHM_PROTO = 0x4100  #: user-level protocol: "shared-memory call"
RING_PROTO = shm_ring.RING_PROTO  #: user-level protocol: "the request ring has work"
_ZEROS = memoryview(bytes(shm_ring.SLOT_SIZE * 2))  # the areas are cleared from this (no allocation)
_LEN = struct.Struct("<I")

#: A response: one buffer, or buffers written one after the other (no join)
Response = bytes | Sequence[Any]


class ShmError(Exception):
    def __init__(self, what: str, error: IpcError | int):
        self.error = error
        super().__init__(f"{what}: {error!r}")

    @property
    def partner_gone(self) -> bool:
        """The server is gone (restarting, or for good): L4_IPC_ENOT_EXISTENT."""
        return self.error == IpcError.ENOT_EXISTENT


def _map(region: Region) -> Any:
    m = region.map
    if m is None:
        raise PermissionError(f"region {region.address:#x} was revoked")
    return m


def _write_parts(m: Any, offset: int, parts: Sequence[Any]) -> None:
    for part in parts:
        n = len(part)
        m[offset:offset + n] = part
        offset += n


def _clear(m: Any, offset: int, length: int) -> None:
    while length > 0:
        n = min(length, len(_ZEROS))
        m[offset:offset + n] = _ZEROS[:n]
        offset, length = offset + n, length - n


class ShmClient:
    """The client side: ``transact(request) -> response`` (blocking, one at a time).

    ``transact_parts`` writes a frame given as buffers straight into the request area and
    answers a view of the response area; ``transact_many`` queues frames on the request ring
    (one signal per ring-full) when the server has one (else one call each)."""

    def __init__(self, env, gate: int, shm: int, *, timeout_us: int | None = None):
        self.env, self.gate, self.timeout_us = env, gate, timeout_us
        self.region = env.map_dataspace(shm, writable=True)
        self.half = self.region.size // 2
        self.ring_slots = shm_ring.slots_that_fit(self.region.size)
        self._ring_next = 0  #: the ring index of the next request (free-running)

    def transact(self, request: bytes) -> bytes:
        return bytes(self.transact_parts((request,), len(request)))

    def transact_parts(self, parts: Sequence[Any], size: int) -> memoryview:
        """One request frame given as buffers (``size`` bytes in all) -> a view of the response
        (valid until the next request; copy what you keep)."""
        if size > self.half:
            raise ShmError("request larger than the shared request area", -Err.EMSGTOOLONG)
        m = self.region.map
        if m is None:
            raise PermissionError(f"region {self.region.address:#x} was revoked")
        offset = 0
        for part in parts:
            n = len(part)
            m[offset:offset + n] = part
            offset += n
        reply = self.env.call(self.gate, SHM_PROTO, size, timeout_us=self.timeout_us)
        if not reply.ok:
            raise ShmError("shared-memory call", reply.error)
        if reply.status < 0:
            raise ShmError("shared-memory call", reply.status)
        length = reply.word(0)
        if length > self.half:
            raise ShmError("response larger than the shared response area", -Err.EMSGTOOLONG)
        return memoryview(m)[self.half:self.half + length]

    def transact_many(self, frames: Sequence[tuple[Sequence[Any], int]],
                      read: Callable[[int, memoryview], Any] = lambda _k, view: bytes(view)) -> list[Any]:
        """Many request frames (each as buffers and its size) -> ``read(k, view of response k)``
        for each, in order (the view is valid during the call only; the default copies it).

        Through the request ring: up to ``ring_slots`` frames per signal. A dataspace too small
        for one slot sends them one by one."""
        if self.ring_slots < 1:
            return [read(k, self.transact_parts(parts, size)) for k, (parts, size) in enumerate(frames)]
        out: list[Any] = []
        for start in range(0, len(frames), self.ring_slots):
            out += self._ring_pass(frames[start:start + self.ring_slots], read, start)
        return out

    def _ring_pass(self, frames: Sequence[tuple[Sequence[Any], int]],
                   read: Callable[[int, memoryview], Any] = lambda _k, view: bytes(view), base: int = 0) -> list[Any]:
        m = _map(self.region)
        count, first = self.ring_slots, self._ring_next
        header = shm_ring.RingHeader(count, first + len(frames), first)
        for k, (parts, size) in enumerate(frames):
            if size > shm_ring.SLOT_SIZE - _LEN.size:
                raise ShmError("request larger than a ring slot", -Err.EMSGTOOLONG)
            offset = header.slot_offset(first + k)
            _LEN.pack_into(m, offset, size)
            _write_parts(m, offset + _LEN.size, parts)
        shm_ring.write_header(m, count, header.produced, first)
        reply = self.env.call(self.gate, RING_PROTO, timeout_us=self.timeout_us)
        if not reply.ok:
            raise ShmError("request ring", reply.error)
        if reply.status < 0:
            raise ShmError("request ring", reply.status)
        self._ring_next = header.produced & 0xFFFF_FFFF
        answered = reply.word(0) if reply.has_words(1) else 0
        if answered != len(frames):
            raise ShmError(f"request ring: {answered} of {len(frames)} requests answered", -Err.EIO)
        out = []
        for k in range(len(frames)):
            try:
                view = shm_ring.read_response(m, header.slot_offset(first + k))
            except shm_ring.RingError as exc:
                raise ShmError(f"request ring: {exc}", -Err.EMSGTOOLONG) from None
            with view:
                out.append(read(base + k, view))
        return out


@dataclasses.dataclass
class ShmPeer:
    """One client of a server: the label its gate was bound with and the mapped dataspace."""

    name: str
    label: int
    region: Region
    last_response: int = 0  # bytes of the previous response still in the response area

    @property
    def half(self) -> int:
        return self.region.size // 2


def handle_shm_call(peers: dict[int, ShmPeer], msg, handle: Callable[[ShmPeer, bytes], Response]
                    ) -> tuple[int, tuple[int, ...]]:
    """One shared-memory call -> the reply (status, words).

    The request is copied out and its area zeroed, the previous response is zeroed,
    ``handle`` runs and its response (bytes, or buffers to write one after the other) is
    written. ``handle`` must not raise: its errors are part of its response bytes.
    """
    if msg.proto != SHM_PROTO:
        return -int(Err.EBADPROTO), ()
    peer = peers.get(msg.label & ~3)
    if peer is None:
        return -int(Err.EPERM), ()
    length = msg.word(0) if msg.has_words(1) else 0
    region = peer.region
    half = region.size // 2
    if length > half:
        return -int(Err.EMSGTOOLONG), ()
    m = region.map
    if m is None:
        raise PermissionError(f"region {region.address:#x} was revoked")
    request = m[0:length]  # the one copy the service works on (the client may change the area)
    last, zeros = peer.last_response, len(_ZEROS)
    if last <= zeros and length <= zeros:  # the previous response is gone; done with the request area
        m[half:half + last] = _ZEROS[:last]
        m[0:length] = _ZEROS[:length]
    else:
        _clear(m, half, last)
        _clear(m, 0, length)
    response: Any = handle(peer, request)
    parts: Sequence[Any]
    if response.__class__ is bytes:
        size = len(response)
        parts = (response,)
    else:
        parts = (response,) if isinstance(response, (bytearray, memoryview)) else response
        size = 0
        for part in parts:
            size += len(part)
    if size > half:
        peer.last_response = 0
        return -int(Err.EMSGTOOLONG), ()
    offset = half
    for part in parts:
        n = len(part)
        m[offset:offset + n] = part
        offset += n
    peer.last_response = size
    return 0, (size,)


def handle_ring_call(peers: dict[int, ShmPeer], msg, handle: Callable[[ShmPeer, bytes], Response]
                     ) -> tuple[int, tuple[int, ...]]:
    """One signal of the request ring -> the reply (status, (requests answered,)).

    Every request in [consumed, produced) is copied out of its slot, handed to ``handle`` and
    answered in the same slot (exactly one response each, in order); ``consumed`` moves past
    each as it is answered. A header that does not hold is -L4_EINVAL, with nothing answered.
    """
    peer = peers.get(msg.label & ~3)
    if peer is None:
        return -int(Err.EPERM), ()
    m = _map(peer.region)
    try:
        header = shm_ring.read_header(m, peer.region.size)
    except shm_ring.RingError:
        return -int(Err.EINVAL), ()
    peer.last_response = 0  # the ring has overwritten the areas
    for k in range(header.pending):
        index = header.consumed + k
        request = shm_ring.read_request(m, header, index)
        response = handle(peer, request)
        parts = (response,) if isinstance(response, (bytes, bytearray, memoryview)) else response
        shm_ring.write_frame(m, header.slot_offset(index), parts)
        shm_ring.set_consumed(m, index + 1)
    return 0, (header.pending,)


def shm_calls(peers: dict[int, ShmPeer], handle: Callable[[ShmPeer, bytes], Response],
              other: Callable[[Any], Reply | None] | None = None, *, ring: bool = False
              ) -> Callable[[Any], Reply | None]:
    """The ``serve`` handler of a shared-memory service: ``serve(env, shm_calls(peers, handle))``.

    ``peers`` maps gate label -> peer. With ``ring``, ``RING_PROTO`` signals are served from
    the request ring. Messages that are not shared-memory calls go to ``other`` (its None: no
    reply); without ``other`` they are answered with -L4_EBADPROTO.
    """

    def on_message(msg: Any) -> Reply | None:
        proto = msg.proto
        if ring and proto == RING_PROTO:
            status, words = handle_ring_call(peers, msg, handle)
            return Reply(status, words)
        if proto != SHM_PROTO and other is not None:
            return other(msg)
        status, words = handle_shm_call(peers, msg, handle)
        return Reply(status, words)

    return on_message


def bind_peers(env, clients: dict[str, dict]) -> dict[int, ShmPeer]:
    """Bind one gate per client and map its dataspace: ``{"name": {"gate": cap, "shm": cap}}``.

    The label a gate is bound with is what tells clients apart (the kernel sets it).
    """
    peers: dict[int, ShmPeer] = {}
    for i, (name, caps) in enumerate(sorted(clients.items())):
        label = (i + 1) << 4
        status = env.bind_gate(env.cap(caps["gate"]), label)
        if status < 0:
            raise ShmError(f"bind gate {caps['gate']} for {name}", status)
        peers[label] = ShmPeer(name, label, env.map_dataspace(env.cap(caps["shm"]), writable=True))
    return peers
