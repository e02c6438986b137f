"""Typed items: map and grant capabilities and memory from one task into another. Pure.

Everything is checked before anything changes; rights only shrink (``capabilities.rights``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from capabilities.mapdb import Kind, Node
from capabilities.rights import CapRights, MemRights, derive_cap_rights, derive_mem_rights
from kernel_model.abi import INVALID_CAP, L4_CAP_SHIFT, PAGE_SIZE, Err, IpcError, sel
from kernel_model.events import MemoryCreated, Rule
from kernel_model.objects import Memory, Task
from kernel_model.ops import Transfer
from kernel_model.state import RAM_BASE, KernelState
from kernel_model.wire import Invocation, Item, ItemKind, RecvItem


class ItemTransfer(KernelState):
    def cap_budget_refusal(self, task: Task, slot: int, selector: int, op: str) -> Err | None:
        """-L4_ENOMEM (and a violation) if a new capability in ``slot`` would exceed ``task``'s budget."""
        budget = task.budget
        if budget is None or self.db.get(task.space, Kind.OBJECT, slot) is not None:
            return None
        held = self.db.count(task.space, Kind.OBJECT)
        if held < budget.caps:
            return None
        self._deny_task(task, selector, op, Rule.CAP_BUDGET, "-L4_ENOMEM",
                        f"{task.describe()} holds {held} capabilities, its budget")
        return Err.ENOMEM

    def _budget_refused(self, src: Task, dst: Task, item: Item, dest: int) -> bool:
        """Would mapping ``item`` at ``dest`` in ``dst`` exceed dst's capability or mapping budget?"""
        budget = dst.budget
        if budget is None:
            return False
        if item.kind is ItemKind.OBJECT:
            if self.db.get(dst.space, Kind.OBJECT, dest) is not None:
                return False
            held, limit = self.db.count(dst.space, Kind.OBJECT), budget.caps
            rule, what = Rule.CAP_BUDGET, "capabilities"
        else:
            overlapping = sum(1 for n in self.db.in_space(dst.space, Kind.MEMORY)
                              if dest < n.index + n.size and n.index < dest + item.size)
            held, limit = self.db.count(dst.space, Kind.MEMORY) - overlapping, budget.mappings
            rule, what = Rule.MAPPING_BUDGET, "memory mappings"
        if held < limit:
            return False
        self._deny_task(dst, item.index, "map", rule, "L4_IPC_REMAPFAILED",
                        f"{dst.describe()} holds {held} {what}, its budget (mapped by {src.describe()})")
        return True

    def transfer(self, src: Task, items: Sequence[Item], dst: Task, rinv: Invocation | None, via_s: bool, *,
                  window: bool) -> Transfer:
        """Map/grant typed items from ``src`` into ``dst``. Checks everything before changing anything.

        ``window=True``: ordinary IPC; the receiver's buffers (one object slot, one
        memory window) bound where items may land. ``window=False``: Task::map, the
        whole destination space is the window and ``item.dest`` is the address.
        """
        plan: list[tuple[Item, Node[Any] | None, int]] = []
        obj_slot_used = False
        for item in items:
            node: Node[Any] | None
            if item.kind is ItemKind.OBJECT:
                node = self.lookup(src, item.index)
                if window:
                    if rinv is None or rinv.rcv_obj == INVALID_CAP or rinv.rcv_obj & 0x800 or obj_slot_used:
                        return Transfer(error=(IpcError.SEMSGCUT, IpcError.REMSGCUT))
                    dest = rinv.rcv_obj >> L4_CAP_SHIFT
                    obj_slot_used = True
                else:
                    dest = item.dest >> L4_CAP_SHIFT
                plan.append((item, node, dest))
            else:
                node = self._mem_source(src, item.index, item.size)
                if item.size <= 0 or item.size % PAGE_SIZE or item.index % PAGE_SIZE:
                    node = None
                if window:
                    if rinv is None or rinv.rcv_mem_size == 0 or item.dest + item.size > rinv.rcv_mem_size:
                        return Transfer(error=(IpcError.SEMSGCUT, IpcError.REMSGCUT))
                    dest = rinv.rcv_mem_base + item.dest
                else:
                    dest = item.dest
                if dest % PAGE_SIZE:
                    return Transfer(error=(IpcError.SEMAPFAILED, IpcError.REMAPFAILED))
                plan.append((item, node, dest))
        for item, node, dest in plan:
            if node is not None and self._clears_own_source(dst, item, node, dest):
                # Landing there would first unmap what the source itself is derived from (L4 flushes the
                # receive slot first): the map could only fail half-way, so it fails before anything changes.
                return Transfer(error=(IpcError.SEMAPFAILED, IpcError.REMAPFAILED))
        if dst.budget is not None:
            for item, node, dest in plan:
                if node is not None and self._budget_refused(src, dst, item, dest):
                    return Transfer(error=(IpcError.SEMAPFAILED, IpcError.REMAPFAILED), budget=True)
        received: list[RecvItem] = []
        memory: list[tuple[Memory, bool]] = []
        for item, node, dest in plan:
            if node is not None and not node.live:  # an earlier item of this message revoked it
                node = None
            if node is None:
                self._deny_task(src, item.index, "map", Rule.MAP_SOURCE_EMPTY, "nothing mapped",
                                f"typed item names {item.kind.name.lower()} {item.index:#x} the sender does not hold")
                continue
            if item.kind is ItemKind.OBJECT:
                cap_rights = derive_cap_rights(CapRights(node.rights), CapRights(item.rights), partner_has_s=via_s)
                if not cap_rights:
                    continue
                if item.grant:
                    _new, removed = self.db.grant(node, dst.space, dest, int(cap_rights))
                else:
                    _new, removed = self.db.map(node, dst.space, dest, int(cap_rights))
                self.revoked(removed)
                received.append(RecvItem(ItemKind.OBJECT, sel(dest), int(cap_rights)))
            else:
                rights = derive_mem_rights(MemRights(node.rights), MemRights(item.rights))
                if not rights:
                    continue
                offset = node.offset + (item.index - node.index)
                self.revoked(self._clear_memory(dst, dest, item.size))
                if item.grant and node.size == item.size:
                    _new, removed = self.db.grant(node, dst.space, dest, int(rights))
                else:
                    _new, removed = self.db.map(node, dst.space, dest, int(rights), offset=offset, size=item.size)
                self.revoked(removed)
                received.append(RecvItem(ItemKind.MEMORY, dest, int(rights), item.size, offset))
                memory.append((node.obj, MemRights.W in rights))
        return Transfer(tuple(received), tuple(memory))

    def _clears_own_source(self, dst: Task, item: Item, node: Node[Any], dest: int) -> bool:
        """Would emptying the destination (slot or address range) revoke ``node``, the item's source?"""
        if item.kind is ItemKind.OBJECT:
            cleared = [n for n in (self.db.get(dst.space, Kind.OBJECT, dest),) if n is not None and n is not node]
        else:
            cleared = [n for n in self.db.in_space(dst.space, Kind.MEMORY)
                       if dest < n.index + n.size and n.index < dest + item.size]
        if not cleared:
            return False
        ids = {id(n) for n in cleared}
        p: Node[Any] | None = node
        while p is not None:
            if id(p) in ids:
                return True
            p = p.parent
        return False

    def _mem_source(self, task: Task, addr: int, size: int) -> Node[Any] | None:
        best = None
        for node in self.db.in_space(task.space, Kind.MEMORY):
            if (node.index <= addr and addr + size <= node.index + node.size
                    and (best is None or node.size < best.size)):
                best = node
        if best is None and task is self.sigma0:
            return self._carve(task, addr, size)
        return best

    def _carve(self, sigma0: Task, addr: int, size: int) -> Node[Any] | None:
        """Sigma0 maps out RAM it has not handed out yet: materialise the frames as one memory object."""
        if size <= 0 or size % PAGE_SIZE or addr % PAGE_SIZE:
            return None
        if addr < RAM_BASE or addr + size > RAM_BASE + self.ram_size:
            return None
        for node in self.db.in_space(sigma0.space, Kind.MEMORY):
            if addr < node.index + node.size and node.index < addr + size:
                return None  # overlaps frames already materialised with another size
        mem = Memory(name=f"ram@{addr:#x}", size=size, phys=addr)
        node, _ = self.db.insert_root(sigma0.space, Kind.MEMORY, addr, mem,
                                      MemRights.R | MemRights.W | MemRights.X, size=size)
        self._effects.append(MemoryCreated(mem))
        return node

    def _clear_memory(self, task: Task, addr: int, size: int) -> list[Node[Any]]:
        removed: list[Node[Any]] = []
        for node in self.db.in_space(task.space, Kind.MEMORY):
            if addr < node.index + node.size and node.index < addr + size and node.live:
                removed.extend(self.db.unmap(node, include_self=True))
        return removed
