"""Operations the kernel itself performs when a kernel object is invoked, and the registry of
kernel object kinds (``KERNEL_KINDS``: one entry per kind, with its protocols, handler and factory op).

One handler per object kind, each ``(kernel, thread, cap, inv) -> Reply | None``
(``None``: the operation already completed or blocked the thread); the kernel is
seen only through ``ops.KernelOps``. Arguments
are decoded and checked first; state changes only after every check passed
(seL4 cnode.c: decode, then invoke). A failed check answers with a negative
``Err`` in the reply label and, when the caller lacked authority, records a
violation naming the rule.
"""
from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any

from capabilities.mapdb import Kind, ObjectCap
from capabilities.rights import CapRights, MemRights
from kernel_model import server_gone
from kernel_model.abi import (
    INVALID_CAP,
    KERNEL_LABEL,
    L4_CAP_SHIFT,
    DebuggerOp,
    Err,
    FactoryOp,
    GateOp,
    IpcError,
    IrqOp,
    LogOp,
    Proto,
    TaskOp,
    ThreadOp,
    UnmapMask,
    sel,
)
from kernel_model.bootrecord import BootRecord, BootRecordError
from kernel_model.events import ConsoleLine, Rule
from kernel_model.logs import LogBudget, LogStream, printable
from kernel_model.objects import Budget, Debugger, Factory, IpcGate, Irq, KernelLog, KObject, Memory, Task, Thread
from kernel_model.ops import KernelOps
from kernel_model.wire import Invocation, ItemKind, RecvItem

Cap = ObjectCap[Any]  #: a capability to a kernel object; each handler knows its object's kind

FULL = CapRights.parse("svr")


@dataclasses.dataclass(frozen=True)
class Reply:
    label: int = 0
    data: bytes = b""
    items: tuple[RecvItem, ...] = ()
    memory: tuple[tuple[Memory, bool], ...] = ()


def err(code: Err) -> Reply:
    return Reply(-int(code))


def read_words(inv: Invocation, n: int) -> tuple[int, ...] | None:
    """The first ``n`` message registers as unsigned words, or None if the message is shorter."""
    if len(inv.data) < 8 * n:
        return None
    return struct.unpack_from(f"<{n}Q", inv.data)


def kernel_object(k: KernelOps, thread: Thread, cap: Cap, inv: Invocation) -> Reply | None:
    obj = cap.obj
    proto = inv.tag.label
    kind = KERNEL_KINDS[type(obj)]
    if proto not in kind.protocols:
        k.deny(thread, inv.dest, f"proto {proto}", Rule.WRONG_OBJECT_TYPE, "-L4_EBADPROTO",
               f"a {obj.type.value} does not speak protocol {proto}")
        return err(Err.EBADPROTO)
    return kind.handler(k, thread, cap, inv)


def _need(k: KernelOps, thread: Thread, cap: Cap, inv: Invocation, right: CapRights, op: str) -> Reply | None:
    if right in CapRights(cap.rights):
        return None
    k.deny(thread, inv.dest, op, Rule.MISSING_RIGHT, "-L4_EPERM",
            f"needs {right.letters() if right != CapRights.SVR else 'c'} on {cap.obj.describe()}, "
            f"holds {CapRights(cap.rights).letters()}")
    return err(Err.EPERM)


def _own_cap(k: KernelOps, thread: Thread, selector: int, kind: type[KObject]) -> Cap | None:
    node = k.lookup(thread.task, selector)
    if node is None or not isinstance(node.obj, kind) or not node.obj.alive:
        return None
    return node


# ------------------------------------------------------------------- factory
def factory(k: KernelOps, thread: Thread, cap: Cap, inv: Invocation) -> Reply:
    fab: Factory = cap.obj
    if (denied := _need(k, thread, cap, inv, CapRights.S, "factory.create")):
        return denied
    args = read_words(inv, 1)
    if args is None:
        return err(Err.EMSGTOOSHORT)
    what = _signed(args[0])
    if inv.rcv_obj == INVALID_CAP or inv.rcv_obj & 0x800:
        return err(Err.EINVAL)
    dest = inv.rcv_obj >> L4_CAP_SHIFT
    extra = (read_words(inv, min(len(inv.data) // 8, 4)) or ()) + (0, 0, 0, 0)
    kind = BY_FACTORY_OP.get(what)
    cost = kind.cost(extra) if kind is not None else 1
    if fab.used + cost > fab.quota:
        k.deny(thread, inv.dest, "factory.create", Rule.FACTORY_QUOTA, "-L4_ENOMEM",
               f"{fab.describe()} has {fab.quota - fab.used} of {fab.quota} objects left")
        return err(Err.ENOMEM)
    if (refused := k.cap_budget_refusal(thread.task, dest, inv.dest, "factory.create")):
        return err(refused)
    if kind is None or kind.create is None:
        return err(Err.ENOSYS)
    made = kind.create(k, thread, fab, extra, inv)
    if isinstance(made, Reply):
        return made
    obj = made
    if kind.adopt:
        k.adopt(obj)
    fab.used += cost
    _, removed = k.db.insert_root(thread.task.space, Kind.OBJECT, dest, obj, int(FULL))
    k.revoked(removed)
    return Reply(0, items=(RecvItem(ItemKind.OBJECT, sel(dest), int(FULL)),))


# ---------------------------------------------------------------------- task
def task(k: KernelOps, thread: Thread, cap: Cap, inv: Invocation) -> Reply:
    target: Task = cap.obj
    args = read_words(inv, 1)
    if args is None:
        return err(Err.EMSGTOOSHORT)
    op = args[0]
    if op == TaskOp.MAP:
        if (denied := _need(k, thread, cap, inv, CapRights.W, "task.map")):
            return denied
        if any(item.kind is not ItemKind.OBJECT for item in inv.items):
            # Memory reaches a task only through IPC it receives itself (dataspace map),
            # so the receiving process always gets the fd with the result.
            return err(Err.EINVAL)
        tr = k.transfer(thread.task, inv.items, target, None, CapRights.S in CapRights(cap.rights), window=False)
        if tr.error is not None:
            return err(Err.ENOMEM if tr.error[1] is IpcError.REMAPFAILED and tr.budget else Err.EINVAL)
        return Reply(0)
    if op == TaskOp.UNMAP:
        a = read_words(inv, 6)
        if a is None:
            return err(Err.EMSGTOOSHORT)
        _, mask, kind, index, size, rights = a
        return _unmap(k, target, mask, kind, index, size, rights)
    if op == TaskOp.CAP_INFO:
        a = read_words(inv, 2)
        if a is None:
            return err(Err.EMSGTOOSHORT)
        node = k.lookup(target, a[1])
        return Reply(1 if node is not None and node.obj.alive else 0)
    if op == TaskOp.RELEASE_CAP:
        a = read_words(inv, 2)
        if a is None:
            return err(Err.EMSGTOOSHORT)
        node = k.lookup(target, a[1])
        if node is not None:
            k.revoked(k.db.unmap(node, include_self=True))
        return Reply(0)
    return err(Err.ENOSYS)


def _unmap(k: KernelOps, target: Task, mask: int, kind: int, index: int, size: int, rights: int) -> Reply:
    include_self = mask & UnmapMask.ALL_SPACES == UnmapMask.ALL_SPACES
    if kind == ItemKind.OBJECT:
        node = k.lookup(target, index)
        if node is None:
            return Reply(0)
        if mask & 0xC0000000 == UnmapMask.DELETE_OBJ and CapRights.D in CapRights(node.rights):
            k.delete_object(node.obj)
            return Reply(0)
        if CapRights.R in CapRights(rights):
            k.revoked(k.db.unmap(node, include_self=include_self))
        else:
            k.db.reduce(node, rights & int(CapRights.W | CapRights.S), include_self=include_self)
        return Reply(0)
    if kind == ItemKind.MEMORY:
        hits = [n for n in k.db.memory(target.space) if index < n.index + n.size and n.index < index + max(size, 1)]
        for mapping in hits:
            if not mapping.live:
                continue
            if MemRights.R in MemRights(rights):
                k.revoked(k.db.unmap(mapping, include_self=include_self))
            else:
                k.db.reduce(mapping, rights & int(MemRights.W | MemRights.X), include_self=include_self)
        return Reply(0)
    return err(Err.EINVAL)


# -------------------------------------------------------------------- thread
def thread_op(k: KernelOps, caller: Thread, cap: Cap, inv: Invocation) -> Reply:
    target: Thread = cap.obj
    args = read_words(inv, 1)
    if args is None:
        return err(Err.EMSGTOOSHORT)
    if args[0] == ThreadOp.CONTROL:
        return Reply(0)
    if args[0] == ThreadOp.EX_REGS:
        if (denied := _need(k, caller, cap, inv, CapRights.S, "thread.ex_regs")):
            return denied
        task_ = target.task
        if task_ is None or task_.started or not task_.alive:
            return err(Err.EBUSY)
        try:
            record = BootRecord.from_task(inv.data[8:].rstrip(b"\0"))
        except BootRecordError as exc:
            k.deny(caller, inv.dest, "thread.ex_regs", Rule.BAD_ARGUMENT, "-L4_EINVAL", str(exc))
            return err(Err.EINVAL)
        # only the kernel starts root tasks (Sigma0, Moe); the host adds confinement and the work directory
        name = record.name or task_.name
        live = k.live_incarnation(name, task_)
        if live is not None:  # at most one live incarnation per task, ever
            k.deny(caller, inv.dest, "thread.ex_regs", Rule.ONE_INCARNATION, "-L4_EBUSY",
                    f"task {name!r} already runs as {live.describe()}")
            return err(Err.EBUSY)
        task_.name = name
        task_.generation = k.next_generation(name)
        record = dataclasses.replace(record, name=name, generation=task_.generation)
        k.start(task_, record)
        return Reply(0)
    return err(Err.ENOSYS)


# ---------------------------------------------------------------------- gate
def gate(k: KernelOps, thread: Thread, cap: Cap, inv: Invocation) -> Reply:
    g: IpcGate = cap.obj  # only reached with the SVR right (else the message goes to the server)
    args = read_words(inv, 1)
    if args is None:
        return err(Err.EMSGTOOSHORT)
    if args[0] == GateOp.GET_INFOS:  # the label is a full word: MR[0], not the (48-bit) tag label
        return Reply(0, data=struct.pack("<Q", g.label))
    if args[0] == GateOp.BIND_THREAD:
        a = read_words(inv, 3)
        if a is None:
            return err(Err.EMSGTOOSHORT)
        label, tsel = a[1], a[2]
        if label & 3:
            return err(Err.EINVAL)
        if label >= KERNEL_LABEL:
            return _reserved_label(k, thread, inv, "gate.bind", label)
        tcap = _own_cap(k, thread, tsel, Thread)
        if tcap is None:
            return err(Err.EINVAL)
        if (denied := _need(k, thread, cap, inv, CapRights.S, "gate.bind")) or \
                (denied := _need(k, thread, tcap, inv, CapRights.S, "gate.bind(thread)")):
            return denied
        g.label = label
        g.thread = tcap.obj
        waiting = list(g.waiters)
        g.waiters.clear()
        for sender in waiting:
            sender.send_target = None
            k.send_to(sender, g.thread, g, sender.send_label, sender.send_via_s)
        return Reply(0)
    if args[0] == GateOp.SERVER_GONE:
        refused = _need(k, thread, cap, inv, CapRights.S, "gate.server_gone")
        if refused is not None:
            return refused
        server_gone.close(k, g)
        return Reply(0)
    return err(Err.ENOSYS)


# ----------------------------------------------------------------------- irq
def irq(k: KernelOps, thread: Thread, cap: Cap, inv: Invocation) -> Reply:
    q: Irq = cap.obj
    args = read_words(inv, 1)
    if args is None:
        return err(Err.EMSGTOOSHORT)
    op = args[0]
    if inv.tag.label == Proto.IRQ and op == IrqOp.TRIGGER:
        k.trigger(q)
        return Reply(0)
    if inv.tag.label == Proto.IRQ and op == IrqOp.UNMASK:
        return Reply(0)
    if inv.tag.label == Proto.IRQ_SENDER and op == IrqOp.BIND:
        a = read_words(inv, 3)
        if a is None:
            return err(Err.EMSGTOOSHORT)
        tcap = _own_cap(k, thread, a[2], Thread)
        if tcap is None:
            return err(Err.EINVAL)
        if (denied := _need(k, thread, cap, inv, CapRights.S, "irq.bind")) or \
                (denied := _need(k, thread, tcap, inv, CapRights.S, "irq.bind(thread)")):
            return denied
        if a[1] >= KERNEL_LABEL:
            return _reserved_label(k, thread, inv, "irq.bind", a[1])
        q.thread, q.label = tcap.obj, a[1]
        return Reply(0)
    if inv.tag.label == Proto.IRQ_SENDER and op == IrqOp.DETACH:
        if (denied := _need(k, thread, cap, inv, CapRights.S, "irq.detach")):
            return denied
        q.thread = None
        return Reply(0)
    return err(Err.ENOSYS)


# ------------------------------------------------------------- log, debugger
def log(k: KernelOps, thread: Thread, cap: Cap, inv: Invocation) -> Reply:
    args = read_words(inv, 2)
    if args is None or args[0] != LogOp.WRITE:
        return err(Err.ENOSYS)
    lg: KernelLog = cap.obj
    writer = thread.task
    stream = lg.streams.get(writer.id)
    if stream is None:
        stream = lg.streams[writer.id] = LogStream(lg.budget)
    tag = lg.tag or printable(writer.name)[:8]
    before = stream.dropped
    lines, notice, first_drop = stream.write(inv.data[16:16 + args[1]], k.now)
    if notice:
        k.emit(ConsoleLine(notice, tag, lg.color, notice=True))
    for line in lines:
        k.emit(ConsoleLine(line, tag, lg.color))
    if stream.dropped:
        k.log_dropping(stream, tag, lg.color)
    if first_drop:
        k.deny(thread, inv.dest, "log.write", Rule.LOG_RATE, "-L4_EAGAIN",
                f"more than {lg.budget.lines_per_s} lines or {lg.budget.bytes_per_s} bytes per second; "
                "dropping until the second is over")
    return err(Err.EAGAIN) if stream.dropped > before else Reply(0)


def debugger(k: KernelOps, thread: Thread, cap: Cap, inv: Invocation) -> Reply:
    a = read_words(inv, 2)
    if a is None:
        return err(Err.EMSGTOOSHORT)
    if a[0] == DebuggerOp.SET_OBJECT_NAME:
        node = k.lookup(thread.task, a[1])
        if node is None:
            return err(Err.EINVAL)
        node.obj.name = inv.data[16:].rstrip(b"\0").decode("utf-8", "replace")[:32]
        return Reply(0)
    return err(Err.ENOSYS)


def _reserved_label(k: KernelOps, thread: Thread, inv: Invocation, op: str, label: int) -> Reply:
    k.deny(thread, inv.dest, op, Rule.RESERVED_LABEL, "-L4_EINVAL",
            f"label {label:#x} is in the kernel's label space (bit 63 set)")
    return err(Err.EINVAL)


def _signed(word: int) -> int:
    return word - (1 << 64) if word >= 1 << 63 else word


# -------------------------------------------------------------- creation
Extra = tuple[int, ...]  #: MR[0..3] of Factory::create (MR[0] = the factory op), zero-padded


def _new_task(k: KernelOps, thread: Thread, fab: Factory, extra: Extra, inv: Invocation) -> KObject | Reply:
    default = Budget()
    return Task(budget=Budget(caps=extra[1] or default.caps, mappings=extra[2] or default.mappings))


def _new_thread(k: KernelOps, thread: Thread, fab: Factory, extra: Extra, inv: Invocation) -> KObject | Reply:
    bind = _own_cap(k, thread, extra[1], Task)
    if bind is None or bind.obj.threads:
        return err(Err.EINVAL)
    obj = Thread(task=bind.obj)
    bind.obj.threads.append(obj)
    return obj


def _new_factory(k: KernelOps, thread: Thread, fab: Factory, extra: Extra, inv: Invocation) -> KObject | Reply:
    return Factory(quota=extra[1], parent=fab)


def _new_log(k: KernelOps, thread: Thread, fab: Factory, extra: Extra, inv: Invocation) -> KObject | Reply:
    if fab is not k.root_factory:  # a tag is a name on the console: only the root task hands them out
        k.deny(thread, inv.dest, "factory.create(log)", Rule.MISSING_RIGHT, "-L4_EPERM",
               f"only the kernel factory creates logs, not {fab.describe()}")
        return err(Err.EPERM)
    color = chr(extra[1]) if 0 < extra[1] < 0x80 and chr(extra[1]).lower() in "nrgybmcw" else "w"
    tag = printable(inv.data[32:].rstrip(b"\0").decode("utf-8", "replace"))[:8]
    return KernelLog(tag=tag or "?", color=color, budget=LogBudget(extra[2], extra[3]))


# -------------------------------------------------------------- the registry
Handler = Callable[[KernelOps, Thread, Cap, Invocation], "Reply | None"]
Creator = Callable[[KernelOps, Thread, Factory, Extra, Invocation], "KObject | Reply"]


def _one(extra: Extra) -> int:
    return 1


@dataclasses.dataclass(frozen=True)
class KernelKind:
    """One kind of kernel object: everything the kernel core decides by the kind of an object."""

    cls: type[KObject]
    protocols: tuple[int, ...]  #: message-tag labels its invocations may carry (else -L4_EBADPROTO)
    handler: Handler  #: what invoking it does
    factory_op: FactoryOp | None = None  #: Factory::create's MR[0] for it (None: the factory does not make it)
    create: Creator | None = None  #: makes one (or refuses with a Reply)
    cost: Callable[[Extra], int] = _one  #: objects charged against the creating factory's quota
    adopt: bool = False  #: the kernel keeps a list of them (``KernelOps.adopt``)


KERNEL_KINDS: dict[type[KObject], KernelKind] = {kind.cls: kind for kind in (
    KernelKind(Factory, (Proto.FACTORY,), factory, FactoryOp.FACTORY, _new_factory, cost=lambda extra: 1 + extra[1]),
    KernelKind(Task, (Proto.TASK,), task, FactoryOp.TASK, _new_task, adopt=True),
    KernelKind(Thread, (Proto.THREAD,), thread_op, FactoryOp.THREAD, _new_thread),
    KernelKind(IpcGate, (Proto.KOBJECT,), gate, FactoryOp.GATE,
               lambda k, t, f, extra, i: IpcGate(direct=bool(extra[1] & 1))),  # MR[1] bit 0: direct channels
    KernelKind(Irq, (Proto.IRQ, Proto.IRQ_SENDER), irq, FactoryOp.IRQ, lambda *_: Irq(), adopt=True),
    KernelKind(KernelLog, (Proto.LOG,), log, FactoryOp.LOG, _new_log),
    KernelKind(Debugger, (Proto.DEBUGGER,), debugger),
)}
BY_FACTORY_OP: dict[int, KernelKind] = {int(kind.factory_op): kind for kind in KERNEL_KINDS.values()
                                        if kind.factory_op is not None}
