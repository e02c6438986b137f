"""Kernel notices no task can forge, and at most one live incarnation per task (issue 9, attack 6).

The attack: a task sends Moe, through its own parent capability, the very message
the kernel sends when a task exits. Moe reported "exited with status 0" and, with
``restart: on-failure``, started the task again while it still ran: four processes
of one task at once, each with all its capabilities.
"""
from __future__ import annotations

import struct

from capabilities.rights import CapRights
from kernel_model.abi import (
    KERNEL_LABEL,
    EnvSlot,
    Err,
    FactoryOp,
    GateOp,
    IpcFlags,
    MsgTag,
    ParentOp,
    Proto,
    ThreadOp,
    sel,
)
from kernel_model.events import Rule
from kernel_model.objects import Factory, IpcGate
from kernel_model.wire import Invocation
from kernel_world import RWS, World, call, words

R, W, SVR = CapRights.R, CapRights.W, CapRights.parse("svr")


def test_a_task_cannot_send_what_the_kernels_exit_notice_looks_like():
    w = World()
    moe, child = w.task("moe"), w.task("child")
    parent = IpcGate(name="child.parent")
    w.give(moe, 16, parent, SVR)
    w.give(child, EnvSlot.PARENT, parent, R | W)
    w.do(moe, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x40, sel(EnvSlot.THREAD))))
    w.do(moe, Invocation(IpcFlags.WAIT))
    # the forgery: the exit notice's exact words, through the child's own parent cap
    w.do(child, Invocation(IpcFlags.SEND, sel(EnvSlot.PARENT), MsgTag(Proto.PARENT, 2), words(ParentOp.SIGNAL, 0)))
    forged = w.last("moe")
    assert forged.label == 0x40 | W and not forged.label & KERNEL_LABEL
    w.do(moe, Invocation(IpcFlags.WAIT))
    w._collect(w.k.task_exited(child, 3, w.now))
    notice = w.last("moe")
    assert notice.label == KERNEL_LABEL | 0x40 | W  # only the kernel's notice carries bit 63
    assert struct.unpack("<qq", notice.data) == (ParentOp.SIGNAL, 3)


def start(w: World, owner, fab_sel: int, name: str, slot: int):
    w.do(owner, call(sel(fab_sel), Proto.FACTORY, words(FactoryOp.TASK), rcv_obj=sel(slot)))
    w.do(owner, call(sel(fab_sel), Proto.FACTORY, words(FactoryOp.THREAD, sel(slot)), rcv_obj=sel(slot + 1)))
    blob = b'{"program": "testing.adversary", "name": "%s"}' % name.encode()
    blob += bytes(-len(blob) % 8)
    return w.do(owner, Invocation(IpcFlags.CALL, sel(slot + 1), MsgTag(Proto.THREAD, 63),
                                  words(ThreadOp.EX_REGS) + blob))


def test_at_most_one_live_incarnation_per_task_and_each_start_is_a_new_generation():
    w = World()
    moe = w.task("moe")
    w.give(moe, 16, Factory(name="fab", quota=20), RWS)
    assert start(w, moe, 16, "gateway", 20).tag.label == 0
    first = w.k.task_by_name("gateway")
    assert first.generation == 1
    # while it runs, a second start of the same task is refused, whoever asks
    assert start(w, moe, 16, "gateway", 22).tag.label == -Err.EBUSY
    assert w.k.violations[-1].rule is Rule.ONE_INCARNATION
    assert [t for t in w.k.tasks.values() if t.name == "gateway" and t.started and t.alive] == [first]
    w._collect(w.k.task_exited(first, 1, w.now))
    assert start(w, moe, 16, "gateway", 24).tag.label == 0
    second = w.k.task_by_name("gateway")
    assert second is not first and second.generation == 2
    # the old incarnation's task capability is stale: the object is dead
    res = w.do(moe, call(sel(20), Proto.TASK, words(2, sel(1))))
    assert res.error.name == "ENOT_EXISTENT"


FORGER = """
name: forged-exit
run:
  until: [evil]
tasks:
  evil:
    program: testing.adversary
    restart: on-failure
    restart_limit: 2
    args: ["send:0x8000,0x4002,0,0", "send:0x8000,0x4002,0,0", "exit:1"]
"""


def test_a_forged_exit_notice_neither_ends_nor_restarts_a_running_task(boot):
    system = boot(FORGER)
    most = 0
    parents: set[int] = set()

    def live_incarnations() -> bool:
        nonlocal most
        most = max(most, sum(1 for p in system.sup.procs.values() if p.task.name == "evil" and p.status is None))
        live = [n.obj for n in system.kernel.db._nodes.values() if n.obj.name == "evil.parent" and n.obj.alive]
        assert len({o.id for o in live}) <= 1  # one incarnation's parent object at a time
        parents.update(o.id for o in live)
        return False

    assert system.run(timeout=90, until=live_incarnations) == 1, system.console.text()
    moe = system.lines("moe")
    # three incarnations (one start, two restarts), each ended only by its real exit status 1
    assert [line for line in moe if line.startswith("evil ")] == [
        "evil exited (1); restart 1 of 2", "evil exited (1); restart 2 of 2", "evil exited with status 1"]
    assert most == 1
    assert len(parents) == 3  # each incarnation had fresh objects (a new generation)
    assert sorted(t.generation for t in system.kernel.tasks.values() if t.name == "evil") == [1, 2, 3]
    assert [code for task, code in system.sup.exited if task == "evil"] == [1, 1, 1]
    sends = [r for r in system.results("evil") if r["command"].startswith("send:")]
    assert len(sends) == 6 and all(r["error"] == "OK" for r in sends)  # delivered to Moe, and ignored


TWICE = """
name: faulted
run:
  until: [evil]
tasks:
  evil:
    program: testing.adversary
    restart: on-failure
    restart_limit: 1
    args: ["twice"]
"""


def test_a_task_the_kernel_faults_is_reported_to_moe_once_its_process_is_gone(boot):
    """Before: the kernel destroyed a faulted task at once, so its process's exit found it dead and
    Moe never heard of it; the system waited forever. Now the notice follows the process's exit."""
    system = boot(TWICE)
    assert system.run(timeout=60) == 1, system.console.text()
    assert [line for line in system.lines("moe") if line.startswith("evil ")] == [
        "evil was killed by signal 9 (137); restart 1 of 1", "evil was killed by signal 9 with status 137"]
    assert [v.rule for v in system.kernel.violations if v.task == "evil"] == [Rule.MALFORMED_FRAME] * 2
