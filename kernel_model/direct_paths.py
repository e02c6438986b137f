"""The kernel's side of direct channels (``kernel_model.direct`` has the registry and the rules). Pure.

Opening on a checked rendezvous (``ipc._rendezvous`` calls ``_direct_open`` before the server's
message is delivered), the doorbell for a server that idles in user space (``Pending``), and
re-validation whenever the epoch moved, with the cuts emitted before every other effect of the
same kernel step (``_take``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from capabilities.mapdb import Node
from kernel_model.abi import INVALID_CAP
from kernel_model.direct import Channel, CutReason, DirectMode
from kernel_model.events import DirectCut, DirectOpen, Effect, Pending
from kernel_model.objects import IpcGate, Thread
from kernel_model.state import KernelState
from kernel_model.wire import Invocation


# ------------------------------------------------------------------ the kernel's part
class DirectPaths(KernelState):
    """The kernel's side of direct channels: open on a checked rendezvous, ring a polling server's doorbell,
    re-validate when the epoch moved (``_take``), cut first. A part of ``kernel.Kernel``."""

    def _direct_open(self, sender: Thread, receiver: Thread, inv: Invocation) -> None:
        """``sender``'s call has just met ``receiver`` (the rendezvous checked it): open a channel if the
        call and the gate qualify. Called before the receiver's message is delivered."""
        directs = self.directs
        client, server_task = sender.task, receiver.task
        if server_task is self.moe or server_task is self.sigma0:
            return  # root tasks serve through the kernel only: their kernel state is what boot and shutdown watch
        if self.trace or directs.mode is DirectMode.OFF or self._retiring:
            return
        if not directs.eligible(inv.flags, inv.timeout, len(inv.items), inv.rcv_obj != INVALID_CAP,
                                inv.rcv_mem_size, len(inv.data)):
            return
        if client is None or server_task is None or client is server_task or not client.alive:
            return
        node = self.lookup(client, inv.dest)
        gate = node.obj if node is not None else None
        if not isinstance(gate, IpcGate) or not gate.alive or gate.thread is not receiver \
                or not directs.gate_allows(gate):
            return
        if directs.epoch != directs.checked:  # validate first: the new record must start from a checked state
            self._direct_validate()
        assert node is not None
        chan, old = directs.open(client, inv.dest, node, gate, receiver, sender.send_label)
        if old is not None:
            self._direct_cut(old, CutReason.REPLACED)
        if chan is not None:
            self._effects.append(DirectOpen(chan.handle, client, inv.dest, server_task, chan.label))

    def _doorbell(self, thread: Thread) -> None:
        """A message waits for ``thread`` in the kernel while it is not receiving: if it serves direct
        channels (it idles in user space), tell it once, until it next enters a receive."""
        directs = self.directs
        if directs.per_server and thread.id in directs.per_server and thread not in directs.rung \
                and thread.task is not None and thread.task.alive:
            directs.rung.add(thread)
            self._effects.append(Pending(thread.task))

    def _direct_validate(self) -> None:
        for chan, reason in self.directs.validate(self.db, self._retiring.values()):
            self._direct_cut(chan, reason)

    def _direct_cut(self, chan: Channel, reason: CutReason) -> None:
        if not chan.announced:  # opened and cut within one kernel step: the host never hears of it
            self._effects = [e for e in self._effects if not (isinstance(e, DirectOpen) and e.handle == chan.handle)]
            return
        self._cuts.append(DirectCut(chan.handle, reason))

    def revoked(self, removed: Sequence[Node[Any]]) -> None:
        self.directs.epoch += 1
        super().revoked(removed)

    def _take(self) -> list[Effect]:
        directs = self.directs
        if not directs.channels and not self._cuts:
            return super()._take()
        if directs.epoch != directs.checked:
            self._direct_validate()
        cuts, self._cuts = self._cuts, []
        for chan in directs.channels.values():
            chan.announced = True
        effects = super()._take()
        return [*cuts, *effects] if cuts else effects  # cuts first: before any result of what caused them
