"""A gate whose server is gone for good answers every caller at once with L4_IPC_ENOT_EXISTENT.

A gate is created by Moe and bound by the task that serves it. While that task lives, callers
rendezvous with it; when it dies after binding, the gate still names its dead thread and a call
fails with ``L4_IPC_ENOT_EXISTENT`` at once (``KernelOps.send_to``). A server that died *before*
binding (a damaged store, a crash loop, an exit 0 without serving) leaves the gate unbound, and an
unbound gate queues its callers until their send timeout, which is forever for a call without one.

Only the parent knows that a server is gone for good (it gave up restarting it, or the image says
not to restart it). It says so with ``GateOp.SERVER_GONE`` on the gate (it needs ``S``, the right to
bind): the gate is bound to a tombstone thread that is dead from birth, so every caller already
queued for the binding and every later caller gets ``L4_IPC_ENOT_EXISTENT`` -- the L4 error for a
vanished partner -- and no violation is recorded against them (they did nothing wrong). A later
``BIND_THREAD`` rebinds the gate to a live thread, as after any restart. L4Re's Ned would delete
the server's objects instead; deleting would also empty every client's capability, and a call on
an empty selector is a ``no-capability`` violation of the caller, which this is not.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kernel_model.events import Traced
from kernel_model.objects import IpcGate, Task, Thread, ThreadState

if TYPE_CHECKING:
    from kernel_model.ops import KernelOps


def tombstone(gate: IpcGate) -> Thread:
    """A thread that never ran, in a task that never started: what a gate whose server is gone for
    good is bound to."""
    grave = Task(name=f"{gate.describe()}.gone", alive=False)
    return Thread(name=grave.name, task=grave, alive=False, state=ThreadState.DEAD)


def close(k: KernelOps, gate: IpcGate) -> None:
    """Bind ``gate`` to a tombstone and answer everyone queued on it (the caller replies 0)."""
    gate.thread = tombstone(gate)
    waiting = list(gate.waiters)
    gate.waiters.clear()
    for sender in waiting:  # queued for a binding that will never come: the dead partner answers
        sender.send_target = None
        k.send_to(sender, gate.thread, gate, sender.send_label, sender.send_via_s)
    if k.trace:
        k.emit(Traced(f"gate {gate.describe()}: server gone for good; {len(waiting)} waiting "
                      f"caller(s) answered L4_IPC_ENOT_EXISTENT"))
