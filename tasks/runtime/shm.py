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
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from kernel_model.abi import Err, IpcError
from tasks.runtime.memory import Region
from tasks.runtime.serve import Reply

SHM_PROTO = 0x4100  #: user-level protocol: "shared-memory call"


class ShmError(Exception):
    def __init__(self, what: str, error: IpcError | int):
        self.error = error
        super().__init__(f"{what}: {error!r}")

    @property
    def partner_gone(self) -> bool:
        """The server is gone (restarting, or for good): L4_IPC_ENOT_EXISTENT."""
        return self.error == IpcError.ENOT_EXISTENT


class ShmClient:
    """The client side: ``transact(request) -> response`` (blocking, one at a time)."""

    def __init__(self, env, gate: int, shm: int, *, timeout_us: int | None = None):
        self.env, self.gate, self.timeout_us = env, gate, timeout_us
        self.region = env.map_dataspace(shm, writable=True)
        self.half = self.region.size // 2

    def transact(self, request: bytes) -> bytes:
        if len(request) > self.half:
            raise ShmError("request larger than the shared request area", -Err.EMSGTOOLONG)
        self.region.write(0, request)
        reply = self.env.call(self.gate, SHM_PROTO, len(request), timeout_us=self.timeout_us)
        if not reply.ok:
            raise ShmError("shared-memory call", reply.error)
        if reply.status < 0:
            raise ShmError("shared-memory call", reply.status)
        length = reply.word(0)
        if length > self.half:
            raise ShmError("response larger than the shared response area", -Err.EMSGTOOLONG)
        return self.region.read(self.half, length)


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


def handle_shm_call(peers: dict[int, ShmPeer], msg, handle: Callable[[ShmPeer, bytes], bytes]
                    ) -> tuple[int, tuple[int, ...]]:
    """One shared-memory call -> the reply (status, words).

    The request is read and its area zeroed, the previous response is zeroed,
    ``handle`` runs and its response is written. ``handle`` must not raise: its
    errors are part of its response bytes.
    """
    if msg.proto != SHM_PROTO:
        return -int(Err.EBADPROTO), ()
    peer = peers.get(msg.label & ~3)
    if peer is None:
        return -int(Err.EPERM), ()
    length = msg.word(0) if msg.has_words(1) else 0
    if length > peer.half:
        return -int(Err.EMSGTOOLONG), ()
    request = peer.region.read(0, length)
    peer.region.write(peer.half, bytes(peer.last_response))  # the previous response is gone
    peer.region.write(0, bytes(length))  # done with the request area
    response = handle(peer, request)
    if len(response) > peer.half:
        peer.last_response = 0
        return -int(Err.EMSGTOOLONG), ()
    peer.region.write(peer.half, response)
    peer.last_response = len(response)
    return 0, (len(response),)


def shm_calls(peers: dict[int, ShmPeer], handle: Callable[[ShmPeer, bytes], bytes],
              other: Callable[[Any], Reply | None] | None = None) -> Callable[[Any], Reply | None]:
    """The ``serve`` handler of a shared-memory service: ``serve(env, shm_calls(peers, handle))``.

    ``peers`` maps gate label -> peer. Messages that are not shared-memory calls go to
    ``other`` (its None: no reply); without ``other`` they are answered with -L4_EBADPROTO.
    """

    def on_message(msg: Any) -> Reply | None:
        if msg.proto != SHM_PROTO and other is not None:
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
