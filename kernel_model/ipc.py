"""IPC: the rendezvous of a send and a receive phase, replies, and asynchronous messages. Pure.

L4's IPC (https://l4re.org/doc/group__l4__ipc__api.html): no kernel buffering; a call's
receive phase waits only for the callee's reply; the callee holds an implicit single-use
reply capability. Kernel objects are invoked through ``invoke``.
"""
from __future__ import annotations

from capabilities.rights import LABEL_RIGHTS, CapRights
from kernel_model.abi import (
    INVALID_CAP,
    KERNEL_LABEL,
    TIMEOUT_ABSOLUTE,
    IpcError,
    IpcFlags,
    MsgTag,
    Proto,
    timeout_to_us,
)
from kernel_model.events import Deliver, Rule, Traced
from kernel_model.objects import AsyncMessage, IpcGate, Irq, Memory, Thread, ThreadState
from kernel_model.state import KernelState
from kernel_model.wire import Invocation, Result

_S_BIT, _SVR_BIT, _LABEL_BITS = int(CapRights.S), int(CapRights.SVR), int(LABEL_RIGHTS)
# IPC phase bits as plain ints: the hot path tests them on every syscall, and enum
# arithmetic costs more than the rest of the rendezvous.
_SEND, _RECV, _OPEN_WAIT, _REPLY = (int(f) for f in (IpcFlags.SEND, IpcFlags.RECV, IpcFlags.OPEN_WAIT, IpcFlags.REPLY))
_ABSOLUTE_EITHER = TIMEOUT_ABSOLUTE << 16 | TIMEOUT_ABSOLUTE
_RUNNING = ThreadState.RUNNING


def op_name(inv: Invocation) -> str:
    if inv.flags & _RECV:
        return "call"
    return "send"


class IpcPaths(KernelState):
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
        self.deny(thread, inv.dest, op_name(inv), Rule.ABSOLUTE_TIMEOUT, f"L4_IPC_{error.name}",
                   f"timeout {inv.timeout:#010x} has an absolute half; only relative timeouts are supported")
        self._complete(thread, Result(error=error))
        return True

    def _send(self, thread: Thread, inv: Invocation) -> None:
        cap = self.lookup(thread.task, inv.dest)  # the one capability lookup of the syscall
        if cap is None:
            self.deny(thread, inv.dest, op_name(inv), Rule.NO_CAPABILITY, "L4_IPC_ENOT_EXISTENT",
                       "selector is empty in the caller's capability table")
            self._complete(thread, Result(error=IpcError.ENOT_EXISTENT))
            return
        obj = cap.obj
        if not obj.alive:
            self._complete(thread, Result(error=IpcError.ENOT_EXISTENT))
            return
        label = inv.tag.label
        if isinstance(obj, IpcGate) and not (label == Proto.KOBJECT and cap.rights & _SVR_BIT):
            self.send_to(thread, obj.thread, obj, cap.rights & _LABEL_BITS, bool(cap.rights & _S_BIT))
            return
        if isinstance(obj, Thread) and label != Proto.THREAD:
            if inv.label >= KERNEL_LABEL:
                self.deny(thread, inv.dest, op_name(inv), Rule.RESERVED_LABEL, "L4_IPC_SEABORTED",
                           f"label {inv.label:#x} is in the kernel's label space")
                self._complete(thread, Result(error=IpcError.SEABORTED))
                return
            self.send_to(thread, obj, None, inv.label, bool(cap.rights & _S_BIT))
            return
        reply = self._invoke(thread, cap, inv)
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
        if self.directs.per_server:
            self._doorbell(target)

    def _rendezvous(self, sender: Thread, receiver: Thread) -> None:
        inv, rinv = sender.inv, receiver.inv
        assert inv is not None  # the sender is in its syscall
        self._unblock(sender)
        tag = inv.tag
        if inv.items:
            tr = self.transfer(sender.task, inv.items, receiver.task, rinv, sender.send_via_s, window=True)
            if tr.error is not None:
                self._complete(sender, Result(error=tr.error[0]))
                self._complete(receiver, Result(error=tr.error[1]))
                return
            items, memory = tr.items, tr.memory
            tag = MsgTag(tag.label, tag.words, len(items), tag.flags & 0x3000)
        else:  # no typed items (the common case): nothing to map, and the tag passes as it is if it can
            items, memory = (), ()
            if tag.items or tag.flags & ~0x3000:
                tag = MsgTag(tag.label, tag.words, 0, tag.flags & 0x3000)
        result = Result(IpcError.OK, tag, sender.send_label, inv.data, items)
        task = receiver.task
        self._served[task] = self._served.get(task, 0) + 1
        if self.trace:
            kind = "call" if inv.flags & _RECV else "send"
            self._effects.append(Traced(
                f"{sender.task.describe()} -> {receiver.task.describe()} {kind} proto {inv.tag.label:#x} "
                f"label {sender.send_label:#x} {inv.tag.words}w {len(items)} item(s)"))
        if inv.flags & _RECV:  # a call: wait for the reply from this partner only
            if self.directs.mode:
                self._direct_open(sender, receiver, inv)  # kernel_model.direct: before the message is delivered
            receiver.reply_to = sender
            sender.generation += 1
            self._block(sender, ThreadState.RECEIVING, receiver, timeout_to_us(inv.timeout & 0xFFFF))
            if sender.deadline is not None and sender.deadline <= self.now:
                self._complete(sender, Result(error=IpcError.RETIMEOUT))
                receiver.reply_to = None
        else:
            self._complete(sender, Result(tag=inv.tag))
        self._complete(receiver, result, memory)

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
        tag = inv.tag
        if inv.items:
            tr = self.transfer(thread.task, inv.items, partner.task, partner.inv, partner.send_via_s, window=True)
            if tr.error is not None:
                self._complete(partner, Result(error=tr.error[1]))
                return tr.error[0]
            items, memory = tr.items, tr.memory
            tag = MsgTag(tag.label, tag.words, len(items))
        else:  # no typed items: nothing to map; the tag passes as it is unless it has flags
            items, memory = (), ()
            if tag.items or tag.flags:
                tag = MsgTag(tag.label, tag.words)
        self._complete(partner, Result(IpcError.OK, tag, 0, inv.data, items), memory)
        if self.trace:
            self._effects.append(Traced(f"{thread.task.describe()} -> {partner.task.describe()} reply status "
                                        f"{inv.tag.label} {inv.tag.words}w {len(items)} item(s)"))
        return IpcError.OK

    def _receive(self, thread: Thread, inv: Invocation) -> None:
        if self.directs.rung:
            self.directs.rung.discard(thread)  # its doorbell rings again for the next message
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
            if self.directs.per_server:
                self._doorbell(thread)

    def _deliver_async(self, thread: Thread, msg: AsyncMessage) -> None:
        if msg.irq is not None:
            msg.irq.pending = False
            task = thread.task
            self._served[task] = self._served.get(task, 0) + 1
        if self.trace:
            source = f"irq {msg.irq.describe()}" if msg.irq is not None else "kernel notice"
            self._effects.append(Traced(f"{source} -> {thread.task.describe()} label {msg.label:#x}"))
        self._complete(thread, Result(tag=msg.tag, label=msg.label, data=msg.data))

    def _block(self, thread: Thread, state: ThreadState, source: Thread | IpcGate | Irq | None,
               timeout_us: int | None) -> None:
        thread.state = state
        if state is ThreadState.RECEIVING:
            assert not isinstance(source, IpcGate)  # a receive phase waits for a thread, an IRQ or anyone
            thread.recv_from = source
        else:
            assert not isinstance(source, Irq)  # a send phase is queued on a thread or a gate
            thread.send_target = source
        self._blocked.add(thread)
        if timeout_us is None:
            if thread.deadline is not None:
                self._timed.discard(thread)
                thread.deadline = None
        else:
            thread.deadline = self.now + timeout_us
            self._timed.add(thread)

    def _unblock(self, thread: Thread) -> None:
        self._blocked.discard(thread)
        if thread.deadline is not None:
            self._timed.discard(thread)
            thread.deadline = None

    def _unqueue(self, thread: Thread) -> None:
        target = thread.send_target
        queue = target.waiters if isinstance(target, IpcGate) else getattr(target, "senders", None)
        if queue is not None and thread in queue:
            queue.remove(thread)
        thread.send_target = None

    def _complete(self, thread: Thread, result: Result, memory: tuple[tuple[Memory, bool], ...] = ()) -> None:
        self._blocked.discard(thread)  # _unblock, inline: this runs for every result
        if thread.deadline is not None:
            self._timed.discard(thread)
            thread.deadline = None
        thread.state = _RUNNING
        thread.inv = None
        thread.recv_from = None
        thread.send_target = None
        task = thread.task
        if task is not None and task.alive:
            self._effects.append(Deliver(task, result, memory if memory.__class__ is tuple else tuple(memory)))
