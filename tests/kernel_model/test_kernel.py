"""The kernel core, driven directly with frames (no processes): IPC rules, rights, errors, violations."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from capabilities.rights import CapRights
from kernel_model.abi import (
    INVALID_CAP,
    EnvSlot,
    Err,
    FactoryOp,
    GateOp,
    IpcError,
    IpcFlags,
    IrqOp,
    MsgTag,
    Proto,
    TaskOp,
    UnmapMask,
    sel,
    timeouts,
)
from kernel_model.events import Rule
from kernel_model.objects import Factory, IpcGate, Irq
from kernel_model.wire import Invocation, Item, ItemKind
from kernel_world import RWS, World, call, words

SVR = CapRights.parse("svr")
RW = CapRights.R | CapRights.W


WAIT = Invocation(IpcFlags.WAIT)


def gate_world(client_rights=RW):
    w = World()
    server, client = w.task("server"), w.task("client")
    gate = IpcGate(name="svc")
    w.give(server, 16, gate, SVR)
    w.give(client, 16, gate, client_rights)
    w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x40, sel(EnvSlot.THREAD))))
    assert w.last("server").tag.label == 0
    return w, server, client, gate


def test_call_through_a_gate_delivers_the_kernel_label_and_the_reply():
    w, server, client, gate = gate_world()
    w.do(server, WAIT)
    w.do(client, call(sel(16), 0x100, words(7), label=0xDEAD))  # the label the client "claims" is ignored
    got = w.last("server")
    assert got.error is IpcError.OK and got.label == 0x40 | CapRights.W  # gate label | W bit of the client's cap
    assert got.tag.label == 0x100 and got.data == words(7)
    assert w.pending("client")
    w.do(server, Invocation(IpcFlags.REPLY_AND_WAIT, INVALID_CAP, MsgTag(0, 1), words(8), timeout=timeouts(0, None)))
    assert w.last("client").data == words(8) and w.last("client").error is IpcError.OK


def test_client_without_s_or_w_is_told_apart_by_the_label():
    w, server, client, gate = gate_world(client_rights=CapRights.R)
    w.do(server, WAIT)
    w.do(client, call(sel(16)))
    assert w.last("server").label == 0x40


def test_unbound_gate_blocks_the_sender_until_bound():
    w = World()
    server, client = w.task("server"), w.task("client")
    gate = IpcGate(name="svc")
    w.give(server, 16, gate, SVR)
    w.give(client, 16, gate, RW)
    w.do(client, call(sel(16)))
    assert w.pending("client")
    w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x40, sel(EnvSlot.THREAD))))
    w.do(server, WAIT)
    assert w.last("server").label == 0x41


def test_zero_send_timeout_to_a_busy_partner_fails_at_once():
    w, server, client, gate = gate_world()
    w.do(client, call(sel(16), timeout=timeouts(0, None)))
    assert w.last("client").error is IpcError.SETIMEOUT


def test_finite_timeouts_fire():
    w, server, client, gate = gate_world()
    w.do(server, Invocation(IpcFlags.WAIT, timeout=timeouts(None, 1000)))
    w.tick(999)
    assert len(w.results["server"]) == 1  # only the bind result so far
    w.tick(1)
    assert w.last("server").error is IpcError.RETIMEOUT
    w.do(client, call(sel(16), timeout=timeouts(500, None)))
    w.tick(500)
    assert w.last("client").error is IpcError.SETIMEOUT


def test_empty_selector_gives_enot_existent_and_a_violation():
    w, server, client, gate = gate_world()
    w.do(client, call(sel(99)))
    assert w.last("client").error is IpcError.ENOT_EXISTENT
    v = w.k.violations[-1]
    assert (v.task, v.selector, v.rule, v.error) == ("client", sel(99), Rule.NO_CAPABILITY, "L4_IPC_ENOT_EXISTENT")
    assert IpcError.ENOT_EXISTENT.errno == -2004


def test_a_client_cannot_rebind_the_gate():
    w, server, client, gate = gate_world()
    w.do(server, WAIT)
    w.do(client, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x80, sel(EnvSlot.THREAD))))
    assert gate.label == 0x40 and gate.thread is server.threads[0]
    assert w.last("server").tag.label == Proto.KOBJECT  # forwarded to the server as an ordinary message


def test_wrong_protocol_and_missing_rights_are_violations():
    w = World()
    t = w.task("t")
    irq = Irq(name="irq")
    w.give(t, 16, irq, CapRights.R)
    w.do(t, call(sel(16), Proto.TASK, words(TaskOp.MAP)))
    assert w.last("t").tag.label == -Err.EBADPROTO
    assert w.k.violations[-1].rule is Rule.WRONG_OBJECT_TYPE
    w.do(t, call(sel(16), Proto.IRQ_SENDER, words(IrqOp.BIND, 0x10, sel(EnvSlot.THREAD))))
    assert w.last("t").tag.label == -Err.EPERM
    assert w.k.violations[-1].rule is Rule.MISSING_RIGHT and "needs s" in w.k.violations[-1].detail


def test_factory_quota():
    w = World()
    t = w.task("t")
    w.give(t, 16, Factory(name="fab", quota=1), RWS)
    w.do(t, call(sel(16), Proto.FACTORY, words(FactoryOp.GATE), rcv_obj=sel(20)))
    assert w.last("t").tag.label == 0 and w.k.lookup(t, sel(20)) is not None
    w.do(t, call(sel(16), Proto.FACTORY, words(FactoryOp.GATE), rcv_obj=sel(21)))
    assert w.last("t").tag.label == -Err.ENOMEM and w.k.violations[-1].rule is Rule.FACTORY_QUOTA


def test_irq_triggers_coalesce():
    w = World()
    t, other = w.task("t"), w.task("other")
    irq = Irq(name="irq")
    w.give(t, 16, irq, RWS)
    w.give(other, 16, irq, CapRights.R)
    w.do(t, call(sel(16), Proto.IRQ_SENDER, words(IrqOp.BIND, 0x50, sel(EnvSlot.THREAD))))
    for _ in range(3):
        w.do(other, Invocation(IpcFlags.SEND, sel(16), MsgTag(Proto.IRQ, 1), words(IrqOp.TRIGGER)))
    w.do(t, WAIT)
    assert w.last("t").label == 0x50
    w.do(t, Invocation(IpcFlags.WAIT, timeout=timeouts(None, 0)))
    assert w.last("t").error is IpcError.RETIMEOUT  # one delivery for three triggers
    assert irq.coalesced == 2


def test_cap_transfer_needs_a_receive_buffer_and_never_adds_rights():
    w, server, client, gate = gate_world()
    secret = IpcGate(name="secret")
    w.give(server, 17, secret, CapRights.R | CapRights.W)
    w.do(client, call(sel(16)))  # no receive buffer for a cap
    w.do(server, WAIT)
    w.do(server,
         Invocation(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, MsgTag(0, 0, 1), items=(Item.obj(sel(17), int(SVR)),)))
    assert w.last("server").error is IpcError.SEMSGCUT and w.last("client").error is IpcError.REMSGCUT
    w.do(client, call(sel(16), rcv_obj=sel(30)))
    w.do(server, WAIT)
    w.do(server,
         Invocation(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, MsgTag(0, 0, 1), items=(Item.obj(sel(17), int(SVR)),)))
    node = w.k.lookup(client, sel(30))
    assert node.obj is secret and CapRights(node.rights) == CapRights.R | CapRights.W  # requested svr, held rw


def test_recursive_revocation_and_grant():
    w = World()
    a, b, c = w.task("a"), w.task("b"), w.task("c")
    obj = IpcGate(name="obj")
    w.give(a, 16, obj, RW)
    w.give(a, 17, b, RWS)  # a may map into b
    w.give(b, 17, c, RWS)  # b may map into c
    w.do(a, call(sel(17), Proto.TASK, words(TaskOp.MAP), items=(Item.obj(sel(16), int(RW), dest=sel(20)),)))
    w.do(b, call(sel(17), Proto.TASK, words(TaskOp.MAP), items=(Item.obj(sel(20), int(RW), grant=True, dest=sel(21)),)))
    assert w.k.lookup(b, sel(20)) is None and w.k.lookup(c, sel(21)).obj is obj  # grant moved it
    w.do(a, call(sel(EnvSlot.TASK), Proto.TASK,
                 words(TaskOp.UNMAP, UnmapMask.OTHER_SPACES, ItemKind.OBJECT, sel(16), 1, int(CapRights.R))))
    assert w.k.lookup(c, sel(21)) is None and w.k.lookup(a, sel(16)) is not None


def test_map_into_a_task_needs_w_on_the_task_cap():
    w = World()
    a, b = w.task("a"), w.task("b")
    w.give(a, 16, IpcGate(name="g"), RW)
    w.give(a, 17, b, CapRights.R)
    w.do(a, call(sel(17), Proto.TASK, words(TaskOp.MAP), items=(Item.obj(sel(16), int(RW), dest=sel(20)),)))
    assert w.last("a").tag.label == -Err.EPERM and w.k.lookup(b, sel(20)) is None


def test_reply_twice_is_denied():
    w, server, client, gate = gate_world()
    w.do(server, WAIT)
    w.do(client, call(sel(16)))
    reply = Invocation(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, MsgTag(0))
    w.do(server, reply)
    w.do(server, reply)
    assert w.last("server").error is IpcError.ENOT_EXISTENT
    assert w.k.violations[-1].rule is Rule.REPLY_WITHOUT_CALLER


def test_callers_of_a_dead_server_get_enot_existent():
    w, server, client, gate = gate_world()
    w.do(server, WAIT)
    w.do(client, call(sel(16)))
    w._collect(w.k.task_exited(server, 137, w.now))
    assert w.last("client").error is IpcError.ENOT_EXISTENT
    w.do(client, call(sel(16)))
    assert w.last("client").error is IpcError.ENOT_EXISTENT


def test_malformed_frames_get_an_error_not_a_crash():
    w, server, client, gate = gate_world()
    w._collect(w.k.syscall(client, b"\x01\x00", w.now))
    assert w.last("client").error is IpcError.SEABORTED
    assert w.k.violations[-1].rule is Rule.MALFORMED_FRAME


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_frames_never_crash_the_kernel(frame):
    w, server, client, gate = gate_world()
    w._collect(w.k.syscall(client, frame, w.now))
    w.do(server, WAIT)  # the kernel still works
    w.do(client, call(sel(16), timeout=timeouts(0, None)))
    assert w.last("server").label == 0x41
