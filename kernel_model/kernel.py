"""The microkernel core: capability lookup and synchronous IPC. Pure and deterministic.

``Kernel.syscall(task, frame, now)`` takes one frame a task sent on its channel
and returns the effects (``events``) the host must carry out: results to
deliver, processes to start or kill, console output. Time is passed in (µs);
``expire(now)`` fires timeouts. Nothing here does I/O.

IPC follows L4 (https://l4re.org/doc/group__l4__ipc__api.html): a rendezvous with no kernel
buffering, an optional send phase and an optional receive phase, each with its
own timeout; a call's receive phase waits only for the callee's reply; the
callee holds an implicit single-use reply capability. A message sent through
an IPC gate arrives with ``gate.label | (W,S bits of the sender's cap)``, which
the sender cannot forge. Typed items map or grant capabilities and memory;
rights only shrink (``capabilities.rights``).

Errors:
- empty selector -> ``L4_IPC_ENOT_EXISTENT`` (+ violation ``no-capability``);
- partner dead or deleted -> ``L4_IPC_ENOT_EXISTENT``;
- partner not ready and send timeout 0 -> ``L4_IPC_SETIMEOUT``; receive timeout -> ``RETIMEOUT``;
- typed item without a receive buffer -> ``SEMSGCUT`` / ``REMSGCUT`` on both sides;
- kernel object invoked with a foreign protocol -> reply label ``-L4_EBADPROTO``;
  lacking a right -> ``-L4_EPERM`` (both + violation); factory quota -> ``-L4_ENOMEM``;
- a frame that does not decode (``wire``) -> ``L4_IPC_SEABORTED`` + ``malformed-frame``;
  an absolute timeout -> ``SETIMEOUT``/``RETIMEOUT`` + ``absolute-timeout`` before any phase;
  a label in the kernel's half (bit 63, ``abi.KERNEL_LABEL``, reserved for its exit
  notices) -> ``-L4_EINVAL`` / ``SEABORTED`` + ``reserved-label``;
- over a task's budget (``objects.Budget``: capability slots, memory mappings; a log's
  lines/bytes per second) -> ``-L4_ENOMEM`` / ``L4_IPC_REMAPFAILED`` / ``-L4_EAGAIN`` + violation;
- anything the kernel itself raises while handling a frame faults that task only and is
  recorded as a ``kernel-bug`` event (the last-resort boundary in ``syscall``).
"""
from __future__ import annotations

import struct
from typing import Any, Sequence

from capabilities.mapdb import Kind, MappingDb, Node, ObjectCap
from capabilities.rights import LABEL_RIGHTS, CapRights, MemRights, derive_cap_rights, derive_mem_rights
from kernel_model import invoke
from kernel_model.abi import (INVALID_CAP, KERNEL_LABEL, L4_CAP_SHIFT, PAGE_SIZE, TIMEOUT_ABSOLUTE, EnvSlot, Err,
                              IpcError, IpcFlags, MsgTag, Proto, sel, timeout_to_us)
from kernel_model.events import (ConsoleLine, Deliver, Denied, Effect, Kill, MemoryCreated, MemoryRetired, Remapped,
                                 Revoked, Rule, Spawn, Traced, Violation)
from kernel_model.bootrecord import BootModule, BootRecord, RamRegion
from kernel_model.logs import LogStream
from kernel_model.objects import (AsyncMessage, Debugger, Factory, IpcGate, Irq, KObject, KernelLog, Memory, Task,
                                  Thread, ThreadState)
from kernel_model.ops import Transfer
from kernel_model.wire import Invocation, Item, ItemKind, RecvItem, Result, WireError, decode_invocation

RAM_BASE = 0x0010_0000  #: physical address of the first RAM byte Sigma0 owns
MODULE_BASE = 0x8000_0000_0000  #: where bootstrap places boot modules (outside RAM)
SIGMA0_PAGER_LABEL = 0x40  #: label of Moe's pager gate to Sigma0 (fiasco init_std_workload)
FULL = CapRights.parse("svr")
_S_BIT, _SVR_BIT = int(CapRights.S), int(CapRights.SVR)
# IPC phase bits as plain ints: the hot path tests them on every syscall, and enum
# arithmetic costs more than the rest of the rendezvous.
_SEND, _RECV, _OPEN_WAIT, _REPLY = (int(f) for f in (IpcFlags.SEND, IpcFlags.RECV, IpcFlags.OPEN_WAIT, IpcFlags.REPLY))
_ABSOLUTE_EITHER = TIMEOUT_ABSOLUTE << 16 | TIMEOUT_ABSOLUTE


class Kernel:
    """All kernel state. Only the kernel ever holds capability tables (in ``db``)."""

    def __init__(self, *, object_quota: int = 100_000):
        self.db = MappingDb()
        self.tasks: dict[int, Task] = {}
        self.root_factory = Factory(name="factory", quota=object_quota)
        self.console = KernelLog(name="kernel-log")
        self.debugger = Debugger(name="jdb")
        self.violations: list[Violation] = []
        self.ram_size = 0
        self.now = 0
        self._effects: list[Effect] = []
        self._blocked: set[Thread] = set()
        self.ipc_count = 0
        self.trace = False  # emit a Traced effect per rendezvous, reply and kernel operation
        self.ipc_by_task: dict[str, int] = {}
        self.irqs: list[Irq] = []
        self._retiring: dict[int, Memory] = {}  # memory a live task lost but still has mapped
        self._current: Thread | None = None  # the thread whose syscall is being handled
        self._held: list[Deliver] = []  # results held back from holders of memory being retired
        self.sigma0: Task | None = None
        self.moe: Task | None = None
        self._generations: dict[str, int] = {}
        self.log_drops: dict[int, tuple[LogStream, str, str]] = {}  # logs that dropped lines: (stream, tag, colour), notice due

    # ------------------------------------------------------------------ boot
    def boot(self, *, ram: int, modules: list[tuple[str, bytes]], moe_args: list[str] | None = None) -> list[Effect]:
        """Create Sigma0 and Moe the way fiasco's init_std_workload does, and start them."""
        self.ram_size = ram
        sigma0, s0_thread = self._new_root_task("sigma0")
        moe, moe_thread = self._new_root_task("moe")
        self.sigma0, self.moe = sigma0, moe
        pager = IpcGate(name="sigma0-pager", label=SIGMA0_PAGER_LABEL, thread=s0_thread)
        self.db.insert_root(moe.space, Kind.OBJECT, EnvSlot.PAGER, pager, CapRights.R | CapRights.W)
        self.db.insert_root(moe.space, Kind.OBJECT, EnvSlot.DEBUGGER, self.debugger, FULL)
        addr = MODULE_BASE
        mods = []
        boot_memory = []
        for name, content in modules:
            size = max(PAGE_SIZE, -(-len(content) // PAGE_SIZE) * PAGE_SIZE)
            mem = Memory(name=f"rom/{name}", size=size, phys=addr, content=content)
            self.db.insert_root(moe.space, Kind.MEMORY, addr, mem, MemRights.R | MemRights.X, size=size)
            self._effects.append(MemoryCreated(mem))
            boot_memory.append(mem)
            mods.append(BootModule(name, addr, len(content), size))
            addr += size + PAGE_SIZE
        self.start(sigma0, BootRecord("roottasks.sigma0", "sigma0", root=True, ram=RamRegion(RAM_BASE, ram)))
        self.start(moe, BootRecord("roottasks.moe", "moe", tuple(moe_args or ()), root=True, modules=tuple(mods)),
                    tuple(boot_memory))
        return self._take()

    def _new_root_task(self, name: str) -> tuple[Task, Thread]:
        task = Task(name=name)
        thread = Thread(name=f"{name}.main", task=task)
        task.threads.append(thread)
        self.tasks[task.id] = task
        for slot, obj in ((EnvSlot.TASK, task), (EnvSlot.FACTORY, self.root_factory), (EnvSlot.THREAD, thread),
                          (EnvSlot.LOG, self.console)):
            self.db.insert_root(task.space, Kind.OBJECT, slot, obj, FULL if slot != EnvSlot.TASK else
                                CapRights.R | CapRights.W | CapRights.S | CapRights.D)
        return task, thread

    def start(self, task: Task, record: BootRecord, memory: tuple[Memory, ...] = ()) -> None:
        task.started = True
        self._effects.append(Spawn(task, record, memory))

    # ------------------------------------------------------------ entry points
    def syscall(self, task: Task, frame: bytes, now: int) -> list[Effect]:
        """One frame from ``task``'s channel. Never raises on task input."""
        self.now = now
        thread = task.threads[0] if task.threads else None
        if thread is None or not task.alive or thread.state is ThreadState.DEAD:
            return self._take()
        if thread.state is not ThreadState.RUNNING:
            # The runtime is synchronous; a second frame while blocked breaks the protocol.
            self.deny(thread, 0, "ipc", Rule.MALFORMED_FRAME, "L4_IPC_SEABORTED", "frame while blocked in IPC")
            self.kill_task(task, status=None)
            return self._take()
        try:
            inv = decode_invocation(frame)
        except WireError as exc:
            self.deny(thread, 0, "ipc", Rule.MALFORMED_FRAME, "L4_IPC_SEABORTED", str(exc))
            self._complete(thread, Result(error=IpcError.SEABORTED))
            return self._take()
        self.ipc_count += 1
        name = task.describe()
        self.ipc_by_task[name] = self.ipc_by_task.get(name, 0) + 1
        self._current = thread
        try:
            self._ipc(thread, inv)
        except Exception as exc:  # noqa: BLE001 - the last-resort boundary: a kernel slip costs one task
            self._kernel_bug(thread, inv, exc)
        finally:
            self._current = None
        return self._take()

    def _kernel_bug(self, thread: Thread, inv: Invocation, exc: Exception) -> None:
        """The kernel raised while handling ``thread``'s frame: fault that task, record a kernel-bug event.

        Never reached by design (every frame is decoded and checked first); it bounds what a future
        slip can cost: the offending task, not the system.
        """
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb is not None else ""
        self.deny(thread, inv.dest, _op_name(inv), Rule.KERNEL_BUG, "task faulted",
                   f"{type(exc).__name__}: {exc}{where}")
        self.kill_task(thread.task, status=None)

    def expire(self, now: int) -> list[Effect]:
        self.now = now
        if self.log_drops:
            self._log_notices(now)
        due = [t for t in self._blocked if t.deadline is not None and t.deadline <= now]
        for thread in sorted(due, key=lambda t: (t.deadline, t.id)) if due else ():
            if thread.state is ThreadState.SENDING:
                self._unqueue(thread)
                self._complete(thread, Result(error=IpcError.SETIMEOUT))
            elif thread.state is ThreadState.RECEIVING:
                self._complete(thread, Result(error=IpcError.RETIMEOUT))
        return self._take()

    def next_deadline(self) -> int | None:
        deadlines = [t.deadline for t in self._blocked if t.deadline is not None]
        deadlines += [end for stream, _tag, _color in self.log_drops.values() if (end := stream.window_end())]
        return min(deadlines) if deadlines else None

    def _log_notices(self, now: int) -> None:
        """A log's second is over: say how many lines it dropped (kernel_model.logs)."""
        for key, (stream, tag, color) in list(self.log_drops.items()):
            end = stream.window_end()
            if end is None:
                del self.log_drops[key]
            elif end <= now:
                notice = stream.roll(now)
                del self.log_drops[key]
                if notice:
                    self._effects.append(ConsoleLine(notice, tag, color, notice=True))

    # ------------------------------------------------------------- budgets
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
            held, limit, rule, what = self.db.count(dst.space, Kind.OBJECT), budget.caps, Rule.CAP_BUDGET, "capabilities"
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

    def task_exited(self, task: Task, status: int, now: int) -> list[Effect]:
        """The task's process is gone (exit or crash): revoke everything, tell its parent."""
        self.now = now
        if task.alive:
            task.exit_status = status
            parent = self._parent_of(task)
            self._destroy_task(task)
        else:  # the kernel killed it earlier: its parent learns of it now that the process is gone
            parent, task.parent_pending = task.parent_pending, None
        if parent is not None and parent[0].alive:
            gate, rights = parent
            # The kernel's label space (bit 63): no task can send a message that arrives like this.
            msg = AsyncMessage(KERNEL_LABEL | gate.label | (rights & LABEL_RIGHTS),
                               MsgTag(Proto.PARENT, 2), struct.pack("<qq", 0, status))
            if gate.thread is not None and gate.thread.state is not ThreadState.DEAD:
                self._post_async(gate.thread, msg)
        return self._take()

    def _parent_of(self, task: Task) -> tuple[IpcGate, int] | None:
        parent = self.db.get(task.space, Kind.OBJECT, EnvSlot.PARENT)
        if parent is None or not isinstance(parent.obj, IpcGate):
            return None
        return parent.obj, parent.rights

    def kill_task(self, task: Task, status: int | None = None) -> None:
        """Fault ``task``: its capabilities go now; its parent's exit notice follows once its process has
        exited (``task_exited``), so a restart never overlaps the old incarnation."""
        if task.alive:
            task.exit_status = status
            task.parent_pending = self._parent_of(task)
            self._destroy_task(task)
            self._effects.append(Kill(task))

    # --------------------------------------------------------------- IPC paths
    def _ipc(self, thread: Thread, inv: Invocation) -> None:
        thread.inv = inv
        flags = inv.flags
        if inv.timeout & _ABSOLUTE_EITHER and self._absolute_timeout(thread, inv):
            return
        if flags & _REPLY:
            err = self._reply(thread, inv)
            if err is not IpcError.OK:
                self._complete(thread, Result(error=err))
            elif flags & _RECV:
                self._receive(thread, inv)
            else:
                self._complete(thread, Result(tag=inv.tag))
        elif flags & _SEND:
            self._send(thread, inv)
        elif flags & _RECV:
            self._receive(thread, inv)
        else:
            self._complete(thread, Result(tag=inv.tag))

    def _absolute_timeout(self, thread: Thread, inv: Invocation) -> bool:
        """Absolute timeouts (bit 15 of a half) name a deadline in a buffer register, which this model
        does not have: the IPC is refused before any phase runs, as if the deadline had passed."""
        send_abs = inv.flags & (_SEND | _REPLY) and inv.timeout & (TIMEOUT_ABSOLUTE << 16)
        recv_abs = inv.flags & _RECV and inv.timeout & TIMEOUT_ABSOLUTE
        if not (send_abs or recv_abs):
            return False
        error = IpcError.SETIMEOUT if send_abs else IpcError.RETIMEOUT
        self.deny(thread, inv.dest, _op_name(inv), Rule.ABSOLUTE_TIMEOUT, f"L4_IPC_{error.name}",
                   f"timeout {inv.timeout:#010x} has an absolute half; only relative timeouts are supported")
        self._complete(thread, Result(error=error))
        return True

    def lookup(self, task: Task, selector: int) -> ObjectCap[Any] | None:
        if selector & 0x800:  # L4_INVALID_CAP_BIT
            return None
        return self.db.cap(task.space, selector >> L4_CAP_SHIFT)

    def _send(self, thread: Thread, inv: Invocation) -> None:
        cap = self.lookup(thread.task, inv.dest)
        if cap is None:
            self.deny(thread, inv.dest, _op_name(inv), Rule.NO_CAPABILITY, "L4_IPC_ENOT_EXISTENT",
                       "selector is empty in the caller's capability table")
            self._complete(thread, Result(error=IpcError.ENOT_EXISTENT))
            return
        obj = cap.obj
        if not obj.alive:
            self._complete(thread, Result(error=IpcError.ENOT_EXISTENT))
            return
        label = inv.tag.label
        if isinstance(obj, IpcGate) and not (label == Proto.KOBJECT and cap.rights & _SVR_BIT):
            self.send_to(thread, obj.thread, obj, cap.rights & LABEL_RIGHTS,
                          bool(cap.rights & _S_BIT))
            return
        if isinstance(obj, Thread) and label != Proto.THREAD:
            if inv.label >= KERNEL_LABEL:
                self.deny(thread, inv.dest, _op_name(inv), Rule.RESERVED_LABEL, "L4_IPC_SEABORTED",
                           f"label {inv.label:#x} is in the kernel's label space")
                self._complete(thread, Result(error=IpcError.SEABORTED))
                return
            self.send_to(thread, obj, None, inv.label, bool(cap.rights & _S_BIT))
            return
        reply = invoke.kernel_object(self, thread, cap, inv)
        if reply is None:  # the operation blocked or completed the thread itself
            return
        if self.trace:
            self._effects.append(Traced(f"{thread.task.describe()} -> kernel {obj.type.value} {obj.describe()} "
                                        f"proto {label} -> {reply.label}"))
        if inv.flags & _RECV:
            self._complete(thread, Result(tag=MsgTag(reply.label, -(-len(reply.data) // 8), len(reply.items)),
                                          data=reply.data, items=reply.items), reply.memory)
        else:
            self._complete(thread, Result(tag=inv.tag))

    def send_to(self, sender: Thread, target: Thread | None, gate: IpcGate | None, label: int, via_s: bool) -> None:
        inv = sender.inv
        assert inv is not None  # a thread in a send phase is in a syscall
        send_to = timeout_to_us(inv.timeout >> 16)
        sender.send_label = label
        sender.send_via_s = via_s
        if target is None:  # unbound gate: wait until bound or the send timeout expires
            if send_to == 0:
                self._complete(sender, Result(error=IpcError.SETIMEOUT))
                return
            assert gate is not None
            gate.waiters.append(sender)
            self._block(sender, ThreadState.SENDING, gate, send_to)
            return
        if gate is not None:
            sender.send_label = gate.label | label
        if target.state is ThreadState.DEAD or target.task is None or not target.task.alive:
            self._complete(sender, Result(error=IpcError.ENOT_EXISTENT))
            return
        if target.state is ThreadState.RECEIVING and target.recv_from is None:
            self._rendezvous(sender, target)
            return
        if send_to == 0:
            self._complete(sender, Result(error=IpcError.SETIMEOUT))
            return
        target.senders.append(sender)
        self._block(sender, ThreadState.SENDING, target, send_to)

    def _rendezvous(self, sender: Thread, receiver: Thread) -> None:
        inv, rinv = sender.inv, receiver.inv
        assert inv is not None  # the sender is in its syscall
        self._unblock(sender)
        tr = self.transfer(sender.task, inv.items, receiver.task, rinv, sender.send_via_s, window=True)
        if tr.error is not None:
            self._complete(sender, Result(error=tr.error[0]))
            self._complete(receiver, Result(error=tr.error[1]))
            return
        result = Result(tag=MsgTag(inv.tag.label, inv.tag.words, len(tr.items), inv.tag.flags & 0x3000),
                        label=sender.send_label, data=inv.data, items=tr.items)
        if self.trace:
            kind = "call" if inv.flags & _RECV else "send"
            self._effects.append(Traced(
                f"{sender.task.describe()} -> {receiver.task.describe()} {kind} proto {inv.tag.label:#x} "
                f"label {sender.send_label:#x} {inv.tag.words}w {len(tr.items)} item(s)"))
        if inv.flags & _RECV:  # a call: wait for the reply from this partner only
            receiver.reply_to = sender
            sender.generation += 1
            self._block(sender, ThreadState.RECEIVING, receiver, timeout_to_us(inv.timeout & 0xFFFF))
            if sender.deadline is not None and sender.deadline <= self.now:
                self._complete(sender, Result(error=IpcError.RETIMEOUT))
                receiver.reply_to = None
        else:
            self._complete(sender, Result(tag=inv.tag))
        self._complete(receiver, result, tr.memory)

    def _reply(self, thread: Thread, inv: Invocation) -> IpcError:
        partner, thread.reply_to = thread.reply_to, None  # single use, consumed even if the reply fails
        if partner is None:
            self.deny(thread, INVALID_CAP, "reply", Rule.REPLY_WITHOUT_CALLER, "L4_IPC_ENOT_EXISTENT",
                       "no caller is waiting for a reply from this thread")
            return IpcError.ENOT_EXISTENT
        if partner.state is not ThreadState.RECEIVING or partner.recv_from is not thread:
            return IpcError.ENOT_EXISTENT  # caller gone or timed out
        # The reply capability carries the caller's W/S rights (fiasco Reply_cap::caller_rights):
        # S survives a reply only if the cap the caller called through had S.
        tr = self.transfer(thread.task, inv.items, partner.task, partner.inv, partner.send_via_s, window=True)
        if tr.error is not None:
            self._complete(partner, Result(error=tr.error[1]))
            return tr.error[0]
        self._complete(partner, Result(tag=MsgTag(inv.tag.label, inv.tag.words, len(tr.items)), data=inv.data,
                                       items=tr.items), tr.memory)
        if self.trace:
            self._effects.append(Traced(f"{thread.task.describe()} -> {partner.task.describe()} reply status "
                                        f"{inv.tag.label} {inv.tag.words}w {len(tr.items)} item(s)"))
        return IpcError.OK

    def _receive(self, thread: Thread, inv: Invocation) -> None:
        recv_to = timeout_to_us(inv.timeout & 0xFFFF)
        if inv.flags & _OPEN_WAIT or inv.flags & _REPLY:
            if thread.asyncs:
                self._deliver_async(thread, thread.asyncs.popleft())
                return
            while thread.senders:
                sender = thread.senders.popleft()
                if sender.state is ThreadState.SENDING:
                    sender.send_target = None
                    thread.inv = inv
                    thread.state = ThreadState.RECEIVING
                    thread.recv_from = None
                    self._rendezvous(sender, thread)
                    return
            source = None
        else:
            cap = self.lookup(thread.task, inv.dest) if inv.dest != INVALID_CAP else None
            if inv.dest != INVALID_CAP and (cap is None or not isinstance(cap.obj, Irq)):
                if cap is None:
                    self.deny(thread, inv.dest, "receive", Rule.NO_CAPABILITY, "L4_IPC_ENOT_EXISTENT",
                               "closed wait on an empty selector")
                self._complete(thread, Result(error=IpcError.ENOT_EXISTENT))
                return
            source = cap.obj if cap is not None else thread  # INVALID_CAP: sleep (wait on oneself)
            if isinstance(source, Irq):
                for msg in list(thread.asyncs):
                    if msg.irq is source:
                        thread.asyncs.remove(msg)
                        self._deliver_async(thread, msg)
                        return
        if recv_to == 0:
            self._complete(thread, Result(error=IpcError.RETIMEOUT))
            return
        self._block(thread, ThreadState.RECEIVING, source, recv_to)

    def _post_async(self, thread: Thread, msg: AsyncMessage) -> None:
        if thread.state is ThreadState.RECEIVING and thread.recv_from is not thread \
                and (thread.recv_from is None or thread.recv_from is msg.irq):
            self._deliver_async(thread, msg)
        else:
            thread.asyncs.append(msg)

    def _deliver_async(self, thread: Thread, msg: AsyncMessage) -> None:
        if msg.irq is not None:
            msg.irq.pending = False
        if self.trace:
            source = f"irq {msg.irq.describe()}" if msg.irq is not None else "kernel notice"
            self._effects.append(Traced(f"{source} -> {thread.task.describe()} label {msg.label:#x}"))
        self._complete(thread, Result(tag=msg.tag, label=msg.label, data=msg.data))

    # ------------------------------------------------------------ typed items
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
                    new, removed = self.db.grant(node, dst.space, dest, int(cap_rights))
                else:
                    new, removed = self.db.map(node, dst.space, dest, int(cap_rights))
                self.revoked(removed)
                received.append(RecvItem(ItemKind.OBJECT, sel(dest), int(cap_rights)))
            else:
                rights = derive_mem_rights(MemRights(node.rights), MemRights(item.rights))
                if not rights:
                    continue
                offset = node.offset + (item.index - node.index)
                self.revoked(self._clear_memory(dst, dest, item.size))
                if item.grant and node.size == item.size:
                    new, removed = self.db.grant(node, dst.space, dest, int(rights))
                else:
                    new, removed = self.db.map(node, dst.space, dest, int(rights), offset=offset, size=item.size)
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
            if node.index <= addr and addr + size <= node.index + node.size:
                if best is None or node.size < best.size:
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

    # ------------------------------------------------------- thread bookkeeping
    def _block(self, thread: Thread, state: ThreadState, source: Thread | IpcGate | Irq | None,
               timeout_us: int | None) -> None:
        thread.state = state
        if state is ThreadState.RECEIVING:
            assert not isinstance(source, IpcGate)  # a receive phase waits for a thread, an IRQ or anyone
            thread.recv_from = source
        else:
            assert not isinstance(source, Irq)  # a send phase is queued on a thread or a gate
            thread.send_target = source
        thread.deadline = None if timeout_us is None else self.now + timeout_us
        self._blocked.add(thread)

    def _unblock(self, thread: Thread) -> None:
        self._blocked.discard(thread)
        thread.deadline = None

    def _unqueue(self, thread: Thread) -> None:
        target = thread.send_target
        queue = target.waiters if isinstance(target, IpcGate) else getattr(target, "senders", None)
        if queue is not None and thread in queue:
            queue.remove(thread)
        thread.send_target = None

    def _complete(self, thread: Thread, result: Result, memory: tuple[tuple[Memory, bool], ...] = ()) -> None:
        self._unblock(thread)
        thread.state = ThreadState.RUNNING
        thread.inv = None
        thread.recv_from = None
        thread.send_target = None
        if thread.task is not None and thread.task.alive:
            self._effects.append(Deliver(thread.task, result, tuple(memory)))

    def _destroy_task(self, task: Task) -> None:
        task.alive = False
        dead = set(task.threads)
        for thread in task.threads:
            if thread.state is ThreadState.SENDING:
                self._unqueue(thread)
            self._unblock(thread)
            thread.state = ThreadState.DEAD
            thread.alive = False
            for sender in list(thread.senders):
                self._complete(sender, Result(error=IpcError.ENOT_EXISTENT))
            thread.senders.clear()
            thread.asyncs.clear()
        for other in list(self._blocked):
            if other.state is ThreadState.RECEIVING and other.recv_from in dead:
                self._complete(other, Result(error=IpcError.ENOT_EXISTENT))
        for irq in self.irqs:
            if irq.thread in dead:
                irq.thread = None
        self.revoked(self.db.remove_space(task.space))

    def delete_object(self, obj: KObject) -> None:
        """Delete ``obj`` (unmap with L4_FP_DELETE_OBJ by a holder of D): every cap to it empties."""
        if isinstance(obj, Task):
            self.kill_task(obj)
        elif isinstance(obj, IpcGate):
            # Senders waiting for the gate to be bound fail (ipc_gate.cpp ``block``); sends already
            # queued on the bound thread stay queued there, as in L4.
            for waiter in list(obj.waiters):
                self._complete(waiter, Result(error=IpcError.ENOT_EXISTENT))
            obj.waiters.clear()
        obj.alive = False
        self.revoked(self.db.delete_object(obj))

    # --------------------------------------------------------------- violations
    def deny(self, thread: Thread, selector: int, operation: str, rule: Rule, error: str, detail: str = "") -> None:
        self._deny_task(thread.task, selector, operation, rule, error, detail)

    def _deny_task(self, task: Task | None, selector: int, operation: str, rule: Rule, error: str,
                   detail: str = "") -> None:
        v = Violation(task.describe() if task else "?", selector, operation, rule, error, detail, self.now)
        self.violations.append(v)
        self._effects.append(Denied(v))

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

    def trigger(self, irq: Irq) -> None:
        """An IRQ fires: one zero-word message with the bound label; a trigger while one is
        pending is coalesced (fiasco irq.cpp); an unbound IRQ drops it."""
        irq.triggers += 1
        if irq.thread is None or irq.thread.state is ThreadState.DEAD:
            return
        if irq.pending:
            irq.coalesced += 1
            return
        irq.pending = True
        self._post_async(irq.thread, AsyncMessage(irq.label, MsgTag(0), irq=irq))

    def inject_irq(self, name: str) -> list[Effect]:
        """Trigger the IRQ object called ``name`` from outside (as a debugger or a device would)."""
        self.trigger(next(q for q in self.irqs if q.name == name and q.alive))
        return self._take()

    def next_generation(self, name: str) -> int:
        """Hubris-style task generations: every start of a task called ``name`` is a new incarnation."""
        self._generations[name] = self._generations.get(name, 0) + 1
        return self._generations[name]

    def live_incarnation(self, name: str, other_than: Task) -> Task | None:
        return next((t for t in self.tasks.values()
                     if t is not other_than and t.name == name and t.alive and t.started), None)

    def adopt(self, obj: KObject) -> None:
        if isinstance(obj, Task):
            self.tasks[obj.id] = obj
        elif isinstance(obj, Irq):
            self.irqs.append(obj)

    def emit(self, effect: Effect) -> None:
        self._effects.append(effect)

    def log_dropping(self, stream: LogStream, tag: str, color: str) -> None:
        self.log_drops[id(stream)] = (stream, tag, color)

    # ------------------------------------------------------------ introspection
    def task_by_name(self, name: str) -> Task:
        matches = [t for t in self.tasks.values() if t.name == name and t.alive]
        if not matches:
            raise KeyError(name)
        return matches[-1]

    def dump(self) -> dict[str, list[dict[str, object]]]:
        """Every live task's capabilities: selector, object, type, rights, label, derived-from."""
        out: dict[str, list[dict[str, object]]] = {}
        for task in self.tasks.values():
            if not task.alive:
                continue
            rows = []
            for node in self.db.in_space(task.space, Kind.OBJECT):
                obj = node.obj
                parent = node.parent
                rows.append({
                    "selector": sel(node.index),
                    "object": obj.describe(),
                    "type": obj.type.value,
                    "rights": CapRights(node.rights).letters(),
                    "label": obj.label if isinstance(obj, IpcGate) else None,
                    "derived_from": (f"{self.tasks[parent.space].describe()}:{sel(parent.index):#x}"
                                     if parent is not None and parent.space in self.tasks else None),
                })
            for node in self.db.in_space(task.space, Kind.MEMORY):
                rows.append({"address": node.index, "object": node.obj.describe(), "type": "memory",
                             "rights": MemRights(node.rights).letters(), "size": node.size, "offset": node.offset})
            out[task.describe()] = rows
        return out


def _op_name(inv: Invocation) -> str:
    if inv.flags & _RECV:
        return "call"
    return "send"
