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
from typing import Any

from capabilities.mapdb import Kind, ObjectCap
from capabilities.rights import LABEL_RIGHTS, CapRights, MemRights
from kernel_model import invoke
from kernel_model.abi import KERNEL_LABEL, PAGE_SIZE, EnvSlot, IpcError, MsgTag, Proto, sel
from kernel_model.bootrecord import BootModule, BootRecord, RamRegion
from kernel_model.direct_paths import DirectPaths
from kernel_model.events import ConsoleLine, Effect, Kill, MemoryCreated, Rule, Spawn
from kernel_model.ipc import IpcPaths, op_name
from kernel_model.logs import LogStream
from kernel_model.objects import AsyncMessage, IpcGate, Irq, KernelLog, KObject, Memory, Task, Thread, ThreadState
from kernel_model.retire import MemoryRetirement
from kernel_model.state import RAM_BASE
from kernel_model.transfer import ItemTransfer
from kernel_model.wire import Invocation, Result, WireError, decode_invocation

MODULE_BASE = 0x8000_0000_0000  #: where bootstrap places boot modules (outside RAM)
SIGMA0_PAGER_LABEL = 0x40  #: label of Moe's pager gate to Sigma0 (fiasco init_std_workload)
FULL = CapRights.parse("svr")


class Kernel(DirectPaths, IpcPaths, ItemTransfer, MemoryRetirement):
    """The kernel: its state (``state``), IPC (``ipc``), typed items (``transfer``), memory retirement
    (``retire``), and here boot, the syscall entry, tasks and objects."""

    def _invoke(self, thread: Thread, cap: ObjectCap[Any], inv: Invocation) -> invoke.Reply | None:
        if self.directs.channels and not isinstance(cap.obj, KernelLog):
            self.directs.epoch += 1  # an unmap, a rights change, a (re)bind, a delete: re-check direct channels
        return invoke.kernel_object(self, thread, cap, inv)

    # ------------------------------------------------------------------ boot
    def boot(self, *, ram: int, modules: list[tuple[str, bytes]], moe_args: list[str] | None = None) -> list[Effect]:
        """Create Sigma0 and Moe the way fiasco's init_std_workload does, and start them."""
        self.ram_size = ram
        sigma0, s0_thread = self._new_root_task("sigma0")
        moe, _moe_thread = self._new_root_task("moe")
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
        ipcs = self._ipcs
        ipcs[task] = ipcs.get(task, 0) + 1
        self._current = thread
        try:
            self._ipc(thread, inv)
        except Exception as exc:
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
        self.deny(thread, inv.dest, op_name(inv), Rule.KERNEL_BUG, "task faulted",
                   f"{type(exc).__name__}: {exc}{where}")
        self.kill_task(thread.task, status=None)

    def expire(self, now: int) -> list[Effect]:
        self.now = now
        if self.log_drops:
            self._log_notices(now)
        due = [t for t in self._timed if t.deadline is not None and t.deadline <= now] if self._timed else ()
        for thread in sorted(due, key=lambda t: (t.deadline, t.id)) if due else ():
            if thread.state is ThreadState.SENDING:
                self._unqueue(thread)
                self._complete(thread, Result(error=IpcError.SETIMEOUT))
            elif thread.state is ThreadState.RECEIVING:
                self._complete(thread, Result(error=IpcError.RETIMEOUT))
        return self._take()

    def next_deadline(self) -> int | None:
        deadlines = [t.deadline for t in self._timed if t.deadline is not None]
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

    # ----------------------------------------------------------- tasks, objects
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

    # ------------------------------------------------------------------ IRQs
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

