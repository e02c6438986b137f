"""GateOp.SERVER_GONE: a gate whose server is gone for good answers every caller with L4_IPC_ENOT_EXISTENT."""
from capabilities.rights import CapRights
from kernel_model.abi import EnvSlot, Err, GateOp, IpcError, IpcFlags, Proto, sel, timeouts
from kernel_model.objects import IpcGate
from kernel_model.wire import Invocation
from kernel_world import SVR, World, call, words

R, W = CapRights.R, CapRights.W


def world():
    w = World()
    parent, client, other = w.task("moe"), w.task("client"), w.task("other")
    gate = IpcGate(name="svc")
    w.give(parent, 16, gate, SVR)
    w.give(client, 16, gate, R | W)
    w.give(other, 16, gate, R | W)
    return w, parent, client, other, gate


def gone(w, task):
    return w.do(task, call(sel(16), Proto.KOBJECT, words(GateOp.SERVER_GONE)))


def test_callers_waiting_for_a_binding_that_never_comes_get_enot_existent_at_once():
    w, parent, client, other, gate = world()
    w.do(client, call(sel(16), data=words(1)))  # no timeout at all: it would wait forever
    w.do(other, call(sel(16), data=words(2), timeout=timeouts(60_000_000, 60_000_000)))
    assert w.pending("client") and w.pending("other") and len(gate.waiters) == 2
    assert gone(w, parent).tag.label == 0
    assert w.last("client").error is IpcError.ENOT_EXISTENT
    assert w.last("other").error is IpcError.ENOT_EXISTENT
    assert not gate.waiters
    # and every later caller too, at once, with no violation: calling a vanished service is no offence
    w.do(client, call(sel(16), data=words(3)))
    assert w.last("client").error is IpcError.ENOT_EXISTENT
    assert w.k.violations == []
    assert w.k.next_deadline() is None  # nobody is left blocked


def test_only_a_holder_of_the_server_right_can_declare_the_server_gone():
    w, parent, client, other, gate = world()
    w.do(other, call(sel(16), data=words(2)))
    res = w.do(client, call(sel(16), Proto.KOBJECT, words(GateOp.SERVER_GONE), timeout=timeouts(0, 0)))
    # without S the message goes to the (unbound) gate like any other: nothing changes
    assert res.error is IpcError.SETIMEOUT
    assert w.pending("other") and gate.thread is None
    holder = w.task("holder")
    w.give(holder, 16, gate, R | W | CapRights.parse("c"))  # the KOBJECT right (c) without S
    assert gone(w, holder).tag.label == -Err.EPERM
    assert w.pending("other")


def test_a_later_binding_serves_again():
    w, parent, client, other, gate = world()
    gone(w, parent)
    server = w.task("server")
    w.give(server, 16, gate, SVR)
    bound = w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x10, sel(EnvSlot.THREAD))))
    assert bound.tag.label == 0
    w.do(server, Invocation(IpcFlags.WAIT))
    w.do(client, call(sel(16), data=words(7)))
    assert w.last("server").data == words(7)
