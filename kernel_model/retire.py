"""Memory retirement: a task lost memory it still has mapped, so the backing is replaced. Pure.

The revoked task's process keeps the old backing mapped whatever it does with the notice:
the old memory object is retired and its remaining holders move to a copy, once none of
them can touch it (all inside the kernel).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from capabilities.mapdb import Kind, Node
from kernel_model.events import Deliver, Effect, MemoryRetired, Remapped, Revoked
from kernel_model.objects import Memory, ThreadState
from kernel_model.state import KernelState


class MemoryRetirement(KernelState):
    def revoked(self, removed: Sequence[Node[Any]]) -> None:
        by_task: dict[int, list[int]] = {}
        for node in removed:
            if node.kind is Kind.MEMORY:
                by_task.setdefault(node.space, []).append(node.index)
        for space, addrs in by_task.items():
            task = self.tasks.get(space)
            if task is not None and task.alive and task.started:
                self._effects.append(Revoked(task, tuple(addrs)))
                # The task's process still has the old backing mapped, whatever it does with the
                # notice: retire the backing and move the remaining holders to a copy.
                for node in removed:
                    if node.kind is Kind.MEMORY and node.space == space and self.db.holders(node.obj):
                        self._retiring[node.obj.id] = node.obj

    def _take(self) -> list[Effect]:
        if not self._retiring and not self._held:  # the common case
            taken, self._effects = self._effects, []
            return taken
        pending, self._effects, self._held = self._held + self._effects, [], []
        waiting = {eff.task.id for eff in pending if isinstance(eff, Deliver)}  # blocked until we deliver
        retired = self._retire_ready(waiting)
        busy = {n.space for mem in self._retiring.values() for n in self.db.holders(mem)}
        out: list[Effect] = []
        for eff in pending:
            if isinstance(eff, Deliver) and eff.task.id in busy and eff.task.alive:
                self._held.append(eff)  # a holder stays in the kernel until the retirement is done
            else:
                out.append(eff)
        return retired + out

    def _retire_ready(self, waiting: set[int]) -> list[Effect]:
        """Retire-and-replace memory whose remaining holders are all inside the kernel right now.

        A holder blocked in IPC (or in the syscall being handled, or with its result
        still held back) cannot touch memory until it returns, and its runtime applies
        the ``Remapped`` notice before the result: so the copy is consistent and no
        holder loses a write. A holder running user code delays the retirement until
        it enters the kernel; until then results for holders are held back (``_take``),
        so revocation has completed when the revoker's unmap returns (l4_task_unmap,
        https://l4re.org/doc/group__l4__task__api.html).
        Ordered before the other effects, so notices reach tasks before their results.
        """
        effects: list[Effect] = []
        for mem_id, old in list(self._retiring.items()):
            holders = [n for n in self.db.holders(old) if n.live]
            if not holders:
                del self._retiring[mem_id]
                continue
            threads = [t for n in holders for t in self.tasks[n.space].threads] if all(
                n.space in self.tasks for n in holders) else []
            if any(t.state is ThreadState.RUNNING and t is not self._current and t.task.id not in waiting
                   for t in threads):
                continue
            del self._retiring[mem_id]
            new = Memory(name=old.name, size=old.size, phys=old.phys)
            old.alive = False
            effects.append(MemoryRetired(old, new))
            for node in holders:
                node.obj = new
                task = self.tasks[node.space]
                if task.alive and task.started:
                    effects.append(Remapped(task, node.index, new, node.offset, node.size, node.rights))
        return effects
