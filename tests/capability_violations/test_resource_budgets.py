"""Kernel resources a task can consume are budgeted (issue 9, attack 4 and "budgets").

The attack: one 4 KiB dataspace mapped at 6000 windows grew the mapping database without
bound and slowed every other task's IPC. Now each task has a capability-slot and a
memory-mapping budget (image ``limits``); each attempt over it is an L4 error
(``-L4_ENOMEM`` from a kernel operation, ``L4_IPC_REMAPFAILED`` / ``SEMAPFAILED`` for a
typed item in IPC, the error Fiasco uses for a map that fails on quota) plus a violation.
"""
from __future__ import annotations

import pytest

from capabilities.image import ImageError, LimitsDecl, parse_image
from capabilities.mapdb import Kind
from capabilities.rights import CapRights, MemRights
from kernel_model.abi import (
    INVALID_CAP,
    EnvSlot,
    Err,
    FactoryOp,
    GateOp,
    IpcError,
    IpcFlags,
    MsgTag,
    Proto,
    TaskOp,
    sel,
    timeouts,
)
from kernel_model.events import Kill, Rule
from kernel_model.objects import Budget, Factory, IpcGate, Memory
from kernel_model.wire import Invocation, Item
from kernel_world import RWS, World, call, words

R, W, SVR = CapRights.R, CapRights.W, CapRights.parse("svr")
RW_MEM = int(MemRights.R | MemRights.W)


def test_factory_creation_stops_at_the_capability_budget():
    w = World()
    t = w.task("t")  # holds TASK and THREAD: 2 caps
    t.budget = Budget(caps=5, mappings=5)
    w.give(t, 16, Factory(name="fab", quota=100), RWS)  # 3
    labels = [w.do(t, call(sel(16), Proto.FACTORY, words(FactoryOp.GATE), rcv_obj=sel(20 + i))).tag.label
              for i in range(4)]
    assert labels == [0, 0, -Err.ENOMEM, -Err.ENOMEM]
    assert [v.rule for v in w.k.violations] == [Rule.CAP_BUDGET, Rule.CAP_BUDGET]
    # replacing a cap in a slot it already uses costs nothing
    assert w.do(t, call(sel(16), Proto.FACTORY, words(FactoryOp.GATE), rcv_obj=sel(20))).tag.label == 0
    assert w.k.db.count(t.space, Kind.OBJECT) == 5


def test_a_cap_received_in_ipc_over_budget_fails_on_both_sides():
    w = World()
    server, client = w.task("server"), w.task("client")
    client.budget = Budget(caps=3, mappings=5)
    gate, thing = IpcGate(name="svc"), IpcGate(name="thing")
    w.give(server, 16, gate, SVR)
    w.give(server, 17, thing, RWS)
    w.give(client, 16, gate, R | W)  # the client now holds 3
    w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x10, sel(EnvSlot.THREAD))))
    w.do(server, Invocation(IpcFlags.WAIT))
    w.do(client, call(sel(16), rcv_obj=sel(30)))
    w.do(server, Invocation(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, MsgTag(0, 0, 1),
                            items=(Item.obj(sel(17), int(RWS)),), timeout=timeouts(0, None)))
    assert w.last("server").error is IpcError.SEMAPFAILED and w.last("client").error is IpcError.REMAPFAILED
    assert w.k.lookup(client, sel(30)) is None
    v = w.k.violations[-1]
    assert v.rule is Rule.CAP_BUDGET and v.task == "client" and v.error == "L4_IPC_REMAPFAILED"


def test_task_map_into_a_task_at_its_budget_is_enomem():
    w = World()
    moe, child = w.task("moe"), w.task("child")
    child.budget = Budget(caps=2, mappings=2)
    w.give(moe, 16, child, RWS)
    w.give(moe, 17, IpcGate(name="g"), RWS)
    res = w.do(moe, call(sel(16), Proto.TASK, words(TaskOp.MAP), items=(Item.obj(sel(17), int(RWS), dest=sel(20)),)))
    assert res.tag.label == -Err.ENOMEM and w.k.lookup(child, sel(20)) is None
    assert w.k.violations[-1].rule is Rule.CAP_BUDGET


def mem_world(mappings: int):
    """A server owning one page of memory and answering every call with a mapping of it."""
    w = World()
    server, evil, honest = w.task("server"), w.task("evil"), w.task("honest")
    evil.budget = Budget(caps=64, mappings=mappings)
    page = Memory(name="page", size=4096, phys=0x200000)
    w.k.db.insert_root(server.space, Kind.MEMORY, 0x10000, page, RW_MEM, size=4096)
    gate = IpcGate(name="ds")
    w.give(server, 16, gate, SVR)
    w.give(evil, 16, gate, R | W)
    w.give(honest, 16, gate, R | W)
    w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x10, sel(EnvSlot.THREAD))))
    w.do(server, Invocation(IpcFlags.WAIT))
    return w, server, evil, honest


def map_at(w, server, client, window: int):
    w.do(client, Invocation(IpcFlags.CALL, sel(16), MsgTag(0x100), rcv_mem_base=window, rcv_mem_size=4096))
    w.do(server, Invocation(IpcFlags.REPLY_AND_WAIT, INVALID_CAP, MsgTag(0, 0, 1),
                            items=(Item.mem(0x10000, 4096, RW_MEM),), timeout=timeouts(0, None)))
    if w.last("server").error is not IpcError.OK:  # the reply failed (SEMAPFAILED): wait again, as Moe does
        w.do(server, Invocation(IpcFlags.WAIT))
    return w.last(client.name)


def test_mapping_one_page_at_thousands_of_windows_stops_at_the_mapping_budget():
    w, server, evil, honest = mem_world(mappings=16)
    errors = [map_at(w, server, evil, 0x100_0000 + i * 4096).error for i in range(2000)]
    assert errors[:16] == [IpcError.OK] * 16
    assert set(errors[16:]) == {IpcError.REMAPFAILED}
    assert w.k.db.count(evil.space, Kind.MEMORY) == 16
    assert len(w.k.db) < 100  # the database did not grow with the attack
    assert {v.rule for v in w.k.violations} == {Rule.MAPPING_BUDGET}
    # remapping a window it already uses is not a new entry; the honest client is unaffected
    assert map_at(w, server, evil, 0x100_0000).error is IpcError.OK
    assert map_at(w, server, honest, 0x100_0000).error is IpcError.OK


def test_a_second_frame_while_one_ipc_is_outstanding_faults_the_task():
    """Outstanding calls: one thread per task, so at most one IPC in the kernel per task; a task that
    writes another frame while blocked breaks the protocol and is faulted."""
    w, server, evil, honest = mem_world(mappings=4)
    w.do(evil, call(sel(16)))  # the server takes it and does not reply yet
    w.do(evil, call(sel(16)))
    assert any(isinstance(e, Kill) and e.task is evil for e in w.effects)
    assert w.k.violations[-1].rule is Rule.MALFORMED_FRAME and "while blocked" in w.k.violations[-1].detail


def test_the_image_declares_limits_and_defaults_them():
    text = """
name: lim
tasks:
  a: {program: hello.ping_client, limits: {caps: 40, mappings: 8, log_lines: 5, log_bytes: 1000}}
  b: {program: hello.ping_client}
"""
    image = parse_image(text, "lim.yaml")
    assert image.tasks[0].limits == LimitsDecl(caps=40, mappings=8, log_lines=5, log_bytes=1000)
    assert image.tasks[1].limits == LimitsDecl()


@pytest.mark.parametrize("limits,message", [
    ("{cap: 4}", "unknown key 'cap'"), ("{caps: 0}", "expected an integer >= 1"),
    ("{mappings: 5000000000}", "below 2**32"), ("[1]", "expected a mapping"),
])
def test_a_bad_limit_is_named_with_file_line_and_field(limits, message):
    with pytest.raises(ImageError) as exc:
        parse_image(f"name: lim\ntasks:\n  a:\n    program: hello.ping_client\n    limits: {limits}\n", "lim.yaml")
    assert "lim.yaml:5:" in str(exc.value) and "tasks.a.limits" in str(exc.value) and message in str(exc.value)


MAPPER = """
name: mapper
run:
  until: [evil]
objects:
  shm: {type: dataspace, size: 4KiB}
tasks:
  evil:
    program: testing.adversary
    limits: {mappings: 3}
    args: ["map:shm", "map:shm", "map:shm", "map:shm", "map:shm"]
    caps: {shm: "shm:r"}
"""


def test_a_booted_task_maps_a_dataspace_until_its_budget_and_then_gets_an_error(boot):
    system = boot(MAPPER)
    assert system.run(timeout=60) == 0, system.console.text()
    mapped = [r["mapped"] for r in system.results("evil")]
    assert mapped == [True, True, True, False, False]
    assert "REMAPFAILED" in system.results("evil")[3]["error"]
    assert [v.rule for v in system.kernel.violations if v.task == "evil"] == [Rule.MAPPING_BUDGET] * 2
