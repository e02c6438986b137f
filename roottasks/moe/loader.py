"""Moe's loader: create the image's objects and start its tasks with exactly the declared caps.

What Ned does with ``ld:start({caps = {...}, log = {...}}, "rom/prog")``: create a
task and a thread with the kernel factory, ``Task::map`` each named cap into the
new task with the declared rights (rights only shrink), then start the thread
with its initial stack (the boot record: program, args, cap names -> selectors).
"""
from __future__ import annotations

from typing import Any, Protocol

from capabilities.image import ObjectDecl, TaskDecl
from capabilities.kinds import IMAGE_KINDS
from capabilities.rights import CapRights
from kernel_model.abi import EnvSlot, FactoryOp, Proto, TaskOp, ThreadOp, sel
from kernel_model.bootrecord import BootRecord
from kernel_model.wire import Item
from roottasks.moe.objects import AllocatorObject, DataspaceObject, MoeServices, ParentObject, Served
from roottasks.moe.supervision import SupervisionState


class LoaderServices(MoeServices, Protocol):
    """What the loader asks of Moe (``server.Moe`` provides it)."""

    env: Any
    named: dict[str, tuple[int, str]]
    objects: dict[int, Served]
    tasks: dict[str, TaskRecord]

    def create(self, what: FactoryOp, *args: int, blob: bytes = b"", name: str = "") -> int: ...

    def serve(self, obj: Served, name: str) -> int: ...

    def release(self, selector: int) -> None: ...

    def delete(self, selector: int) -> None: ...

    def delete_served(self, gate: int) -> None: ...

    def free_dataspace(self, ds: DataspaceObject) -> None: ...

CLIENT = CapRights.R | CapRights.W  # what a task gets for its own log, parent and allocator


class TaskRecord:
    def __init__(self, decl: TaskDecl):
        self.decl = decl
        self.name = decl.name
        self.task = 0  # Moe's selectors of the current incarnation
        self.thread = 0
        self.log = self.parent = self.alloc = 0
        self.allocator: AllocatorObject | None = None
        self.parent_obj: ParentObject | None = None  # the current incarnation's parent object
        self.running = False
        self.finished = False
        self.exit_code: int | None = None
        self.restarts = 0
        self.supervision = SupervisionState()  # restarts, backoff, intensity window (roottasks.moe.restarts)


def create_object(moe: LoaderServices, obj: ObjectDecl) -> int:
    kind = IMAGE_KINDS[obj.type]
    if kind.factory_args is not None:  # a kernel object: the kernel factory makes it
        return moe.create(FactoryOp[kind.name.upper()], *(getattr(obj, arg) for arg in kind.factory_args),
                          name=obj.name)
    # a dataspace, which Moe serves itself
    ds = moe.new_dataspace(-(-obj.size // 4096) * 4096, name=obj.name)
    if ds is None:
        raise RuntimeError(f"out of memory for dataspace {obj.name}")
    ds.size = obj.size
    return ds.gate


def start(moe: LoaderServices, rec: TaskRecord) -> None:
    decl = rec.decl
    # Every incarnation gets fresh objects (a new generation, as in Hubris): caps, replies and notices
    # aimed at an earlier incarnation reach deleted gates and fail with L4_IPC_ENOT_EXISTENT.
    limits = decl.limits
    rec.log = moe.create(FactoryOp.LOG, ord(decl.log.color), limits.log_lines, limits.log_bytes,
                         blob=decl.log.tag.encode(), name=f"{decl.name}.log")  # a kernel log: the kernel tags it
    rec.parent_obj = ParentObject(moe, rec)
    rec.parent = moe.serve(rec.parent_obj, f"{decl.name}.parent")
    rec.allocator = AllocatorObject(moe, rec, decl.memory)
    rec.alloc = moe.serve(rec.allocator, f"{decl.name}.mem_alloc")
    rec.task = moe.create(FactoryOp.TASK, limits.caps, limits.mappings, name=decl.name)
    rec.thread = moe.create(FactoryOp.THREAD, rec.task, name=f"{decl.name}.main")
    mapping: list[tuple[int, int, CapRights]] = [
        (EnvSlot.TASK, rec.task, CapRights.R),
        (EnvSlot.THREAD, rec.thread, CapRights.R | CapRights.W | CapRights.S),
        (EnvSlot.LOG, rec.log, CLIENT),
        (EnvSlot.PARENT, rec.parent, CLIENT),
        (EnvSlot.MEM_ALLOC, rec.alloc, CLIENT),
    ]
    names = {}
    for i, cap in enumerate(decl.caps):
        source, _type = moe.named[cap.object]
        slot = EnvSlot.FIRST_NAMED + i
        mapping.append((slot, source, cap.rights))
        names[cap.name] = sel(slot)
    for slot, source, rights in mapping:
        moe.env.call(rec.task, Proto.TASK, TaskOp.MAP, items=[Item.obj(source, rights, dest=sel(slot))]).check(
            f"map into {decl.name}")
    # the task's part of its boot record; the kernel adds its own, the host the network endpoints
    # (the image's network.connect), the work directory and the confinement
    record = BootRecord(decl.program, decl.name, tuple(decl.args), names,
                        first_free=EnvSlot.FIRST_NAMED + len(decl.caps) + 16,
                        config=decl.config if decl.config is not None else {})
    status = moe.env.call(rec.thread, Proto.THREAD, ThreadOp.EX_REGS, blob=record.encode()).status
    if status < 0:
        raise RuntimeError(f"cannot start {decl.name}: {status}")
    rec.running = True
    rec.finished = False


def child_exited(moe: LoaderServices, rec: TaskRecord, code: int, notice_from: ParentObject) -> None:
    """The kernel's exit notice for the incarnation whose parent object is ``notice_from``."""
    if not rec.running or notice_from is not rec.parent_obj:
        return  # an earlier incarnation's notice: that one is already accounted for
    rec.running = False
    rec.exit_code = code
    moe.release(rec.thread)
    moe.release(rec.task)
    rec.task = rec.thread = 0
    if rec.allocator is not None:  # the task's own dataspaces go with it
        for obj in [o for o in moe.objects.values() if isinstance(o, DataspaceObject) and o.owner is rec.allocator]:
            moe.free_dataspace(obj)
        rec.allocator.used = 0
    moe.delete(rec.log)  # this incarnation's objects die with it
    for gate in (rec.parent, rec.alloc):
        moe.delete_served(gate)
    rec.log = rec.parent = rec.alloc = 0
    rec.parent_obj = None  # what happens next (restart now, later, never) is Moe's (server.child_exited)
