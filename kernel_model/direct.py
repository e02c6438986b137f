"""Kernel-granted direct channels: a checked path from a client's selector to a gate's server. Pure.

When a call rendezvouses through a gate that opted in (``IpcGate.direct``, the image's
``direct: true``; or every gate when the host forces it), the kernel has just checked the
whole path: the client's selector names a live gate, the gate is bound to this server thread,
both tasks are alive, the label the server sees is ``gate.label | W/S``. It records that
decision here (a ``Channel``) and asks the host (``DirectOpen``) to hand the two ends of a
fresh socket pair to client and server. The server's runtime attaches the kernel-bound label
to everything read from its end, so the client, which only writes payload, cannot forge it.

The kernel keeps the record and re-checks it whenever anything it rested on may have changed
(an ``epoch`` bumped by every capability removal or rights change, every kernel-object
invocation except log writes, every task death): the client's capability is the same mapping
node with the same rights, the gate is alive with the same label and bound to the same server
thread, both tasks are alive, and neither holds memory being retired (a retirement waits for
its holders to enter the kernel, which a task talking directly never does). A failed check
cuts the channel (``DirectCut``), carried out before the result of the operation that caused
it is delivered: no message passes after the revoker's operation returns. The client's next
call finds its end shut and goes through the kernel, which gives exactly the error and the
violation event it gives without direct channels. docs/direct-channels.md has the whole story.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from typing import Any

from capabilities.mapdb import MappingDb, ObjectCap
from kernel_model.abi import L4_CAP_SHIFT, MR_BYTES, TIMEOUT_ZERO
from kernel_model.objects import IpcGate, Memory, Task, Thread, ThreadState


class DirectMode(enum.IntEnum):
    """Which gates get direct channels (the host sets it; ``L4EMU_DIRECT``)."""

    OFF = 0  #: none (also whenever the kernel traces)
    OPT_IN = 1  #: gates created with the direct flag (the image's ``direct: true``)
    ALL = 2  #: every gate (tests: the whole suite with channels forced on)


class CutReason(enum.Enum):
    CAP_GONE = "capability-gone"  #: the client's selector no longer holds the node the channel was opened on
    RIGHTS_CHANGED = "rights-changed"  #: same node, other rights
    GATE_DELETED = "gate-deleted"
    GATE_REBOUND = "gate-rebound"  #: bound to another thread, or another label
    CLIENT_DEAD = "client-dead"
    SERVER_DEAD = "server-dead"
    MEMORY_RETIRING = "memory-retiring"  #: client or server holds memory being retired
    REPLACED = "replaced"  #: the client opened a new channel on the same selector


MAX_PER_SERVER = 32  #: direct ends one server thread holds at most (each is an fd in its process)
MAX_PER_CLIENT = 16  #: direct ends one client task holds at most
_ZERO_SEND, _ZERO_RECV = TIMEOUT_ZERO << 16, TIMEOUT_ZERO
_CALL = 0x3  #: IpcFlags.SEND | IpcFlags.RECV exactly (no open wait, no reply phase)


@dataclasses.dataclass(eq=False)
class Channel:
    """The kernel's record of one direct channel: everything its opening rested on."""

    handle: int
    client: Task
    selector: int
    node: ObjectCap[Any]  #: the client's mapping node it was opened on
    rights: int  #: that node's rights then
    gate: IpcGate
    gate_label: int
    server: Thread
    label: int  #: what the server sees on every message from this end (gate.label | W/S)
    announced: bool = False  #: its DirectOpen effect has left the kernel

    @property
    def server_task(self) -> Task:
        return self.server.task


class DirectRegistry:
    """The kernel's direct channels, and the epoch that says when to re-check them."""

    def __init__(self) -> None:
        self.mode = DirectMode.OPT_IN
        self.channels: dict[int, Channel] = {}
        self.by_client: dict[tuple[int, int], Channel] = {}  #: (client task id, selector) -> channel
        self.per_server: dict[int, int] = {}  #: server thread id -> live channels
        self.per_client: dict[int, int] = {}  #: client task id -> live channels
        self.rung: set[Thread] = set()  #: server threads told "a message waits" since their last receive
        self.epoch = 0  #: bumped by anything a channel's opening may have rested on
        self.checked = 0  #: the epoch the channels were last validated at
        self._next = 1
        self.opened = 0
        self.cut: dict[CutReason, int] = {}

    def eligible(self, flags: int, timeout: int, n_items: int, rcv_obj_valid: bool, rcv_mem_size: int,
                 data_len: int) -> bool:
        """A call that may open a channel: a plain call, no typed items, no receive windows, a payload that
        fits the message registers, neither timeout zero (the client runtime uses the same rule)."""
        return (flags == _CALL and not n_items and not rcv_obj_valid and not rcv_mem_size and data_len <= MR_BYTES
                and timeout & 0xFFFF0000 != _ZERO_SEND and timeout & 0xFFFF != _ZERO_RECV)

    def gate_allows(self, gate: IpcGate) -> bool:
        return self.mode is DirectMode.ALL or (self.mode is DirectMode.OPT_IN and gate.direct)

    def open(self, client: Task, selector: int, node: ObjectCap[Any], gate: IpcGate, server: Thread,
             label: int) -> tuple[Channel | None, Channel | None]:
        """Record a channel; returns (the new channel or None if over a limit, the channel it replaces)."""
        old = self.by_client.get((client.id, selector))
        if old is not None:
            self.remove(old, CutReason.REPLACED)
        if self.per_server.get(server.id, 0) >= MAX_PER_SERVER or self.per_client.get(client.id, 0) >= MAX_PER_CLIENT:
            return None, old
        chan = Channel(self._next, client, selector, node, node.rights, gate, gate.label, server, label)
        self._next += 1
        self.channels[chan.handle] = chan
        self.by_client[(client.id, selector)] = chan
        self.per_server[server.id] = self.per_server.get(server.id, 0) + 1
        self.per_client[client.id] = self.per_client.get(client.id, 0) + 1
        self.opened += 1
        return chan, old

    def remove(self, chan: Channel, reason: CutReason) -> None:
        if self.channels.pop(chan.handle, None) is None:
            return
        if self.by_client.get((chan.client.id, chan.selector)) is chan:
            del self.by_client[(chan.client.id, chan.selector)]
        for counts, key in ((self.per_server, chan.server.id), (self.per_client, chan.client.id)):
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)
        self.cut[reason] = self.cut.get(reason, 0) + 1

    def serves_directly(self, thread: Thread) -> bool:
        return thread.id in self.per_server

    def validate(self, db: MappingDb, retiring: Iterable[Memory]) -> list[tuple[Channel, CutReason]]:
        """Re-check every channel (the epoch moved); remove and return the ones whose path changed."""
        self.checked = self.epoch
        busy = {n.space for mem in retiring for n in db.holders(mem)}
        failed = []
        for chan in list(self.channels.values()):
            reason = check(chan, db, busy)
            if reason is not None:
                self.remove(chan, reason)
                failed.append((chan, reason))
        return failed


def check(chan: Channel, db: MappingDb, busy: set[int] | frozenset[int] = frozenset()) -> CutReason | None:
    """Why ``chan``'s path no longer holds (None: it still does)."""
    client, server = chan.client, chan.server
    if not client.alive:
        return CutReason.CLIENT_DEAD
    if server.state is ThreadState.DEAD or not server.task.alive:
        return CutReason.SERVER_DEAD
    node = db.cap(client.space, chan.selector >> L4_CAP_SHIFT)
    if node is not chan.node or not node.live:
        return CutReason.CAP_GONE
    if node.rights != chan.rights:
        return CutReason.RIGHTS_CHANGED
    gate = chan.gate
    if not gate.alive:
        return CutReason.GATE_DELETED
    if gate.thread is not server or gate.label != chan.gate_label:
        return CutReason.GATE_REBOUND
    if client.space in busy or server.task.space in busy:
        return CutReason.MEMORY_RETIRING
    return None
