"""Attacks on the kernel's rules, exhaustively, without processes (the catalogue in docs/violations.md).

Each attack asserts the exact error, the violation record naming the rule, and
that no other task's capability table changed.
"""
from __future__ import annotations

import itertools

import pytest

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
from kernel_world import RWS, World, call, others_unchanged, words

R, W, S, D, C = CapRights.R, CapRights.W, CapRights.S, CapRights.D, CapRights.SVR
SVR = CapRights.parse("svr")
EVERY_RIGHTS = [CapRights(sum(int(b) for b in combo)) for n in range(5)
                for combo in itertools.combinations([W, S, D, C], n)]  # R is always present


# ----------------------------------------------------------------- V6: rights matrix
@pytest.mark.parametrize("extra", EVERY_RIGHTS, ids=lambda r: (R | r).letters())
def test_v6_every_operation_needs_exactly_its_right(extra):
    """For every rights set: each kernel operation succeeds iff its required right is held."""
    rights = R | extra
    w = World()
    t, victim = w.task("t"), w.task("victim")
    irq, gate, fab = Irq(name="irq"), IpcGate(name="gate"), Factory(name="fab", quota=100)
    for slot, obj in ((16, irq), (17, gate), (18, fab), (19, victim)):
        w.give(t, slot, obj, rights)
    w.give(t, 20, IpcGate(name="payload"), RWS)
    before = w.tables()

    bind = w.do(t, call(sel(16), Proto.IRQ_SENDER, words(IrqOp.BIND, 0x10, sel(EnvSlot.THREAD))))
    assert (bind.tag.label == 0) == (S in rights)
    trigger = w.do(t, Invocation(IpcFlags.SEND, sel(16), MsgTag(Proto.IRQ, 1), words(IrqOp.TRIGGER)))
    assert trigger.error is IpcError.OK  # any holder may trigger (R)
    gate_bind = w.do(t, call(sel(17), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x20, sel(EnvSlot.THREAD)),
                             timeout=timeouts(0, 0)))
    if C in rights and S in rights:
        assert gate_bind.tag.label == 0 and gate.thread is t.threads[0]
    elif C in rights:
        assert gate_bind.tag.label == -Err.EPERM and gate.thread is None
    else:  # without the server right the message goes to the (unbound) gate: nobody binds it
        assert gate_bind.error is IpcError.SETIMEOUT and gate.thread is None
    create = w.do(t, call(sel(18), Proto.FACTORY, words(FactoryOp.IRQ), rcv_obj=sel(30)))
    assert (create.tag.label == 0) == (S in rights)
    mapped = w.do(t, call(sel(19), Proto.TASK, words(TaskOp.MAP), items=(Item.obj(sel(20), int(RWS), dest=sel(40)),)))
    assert (mapped.tag.label == 0) == (W in rights)
    assert (w.k.lookup(victim, sel(40)) is not None) == (W in rights)
    if W in rights:
        assert CapRights(w.k.lookup(victim, sel(40)).rights) == (RWS if S in rights else R | W)  # S needs S
    for v in w.k.violations:
        assert v.task == "t" and v.rule is Rule.MISSING_RIGHT
    assert len(w.k.violations) == sum([S not in rights, C in rights and S not in rights, S not in rights,
                                       W not in rights])
    if W not in rights:
        others_unchanged(w, before, "t")


# -------------------------------------------------------------- V1 / V14: forged selectors
@pytest.mark.parametrize("selector", [sel(99), sel(1 << 40), INVALID_CAP, 0xFFFF_FFFF_FFFF_F000],
                         ids=["empty", "beyond-table", "invalid-cap", "negative"])
def test_v1_forged_selector(selector):
    w = World()
    t, other = w.task("t"), w.task("other")
    w.give(other, 16, IpcGate(name="secret"), RWS)
    before = w.tables()
    res = w.do(t, call(selector, timeout=timeouts(0, 0)))
    assert res.error is IpcError.ENOT_EXISTENT
    if selector != INVALID_CAP:
        assert w.k.violations[-1].rule is Rule.NO_CAPABILITY
    others_unchanged(w, before, "t")


# ----------------------------------------------------------------------- V7 grant vs map
def test_v7_map_copies_grant_moves():
    w = World()
    a, b, c = w.task("a"), w.task("b"), w.task("c")
    g1, g2 = IpcGate(name="g1"), IpcGate(name="g2")
    w.give(a, 16, g1, RWS)
    w.give(a, 17, g2, RWS)
    w.give(a, 18, b, RWS)
    w.give(a, 19, c, RWS)
    w.do(a, call(sel(18), Proto.TASK, words(TaskOp.MAP), items=(Item.obj(sel(16), int(RWS), dest=sel(20)),)))
    w.do(a, call(sel(19), Proto.TASK, words(TaskOp.MAP), items=(Item.obj(sel(17), int(RWS), grant=True,
                                                                          dest=sel(20)),)))
    assert w.k.lookup(a, sel(16)).obj is g1 and w.k.lookup(b, sel(20)).obj is g1  # map: both hold it
    assert w.k.lookup(a, sel(17)) is None and w.k.lookup(c, sel(20)).obj is g2  # grant: moved
    assert w.k.lookup(b, sel(20)).parent is w.k.lookup(a, sel(16))


# ------------------------------------------------------------------ V8 use after revoke
def test_v8_use_after_recursive_revoke():
    w = World()
    crypto, est, t = w.task("crypto"), w.task("est"), w.task("t")
    key_handle = IpcGate(name="key")
    w.give(crypto, 16, key_handle, RWS)
    w.give(crypto, 17, est, RWS)
    w.give(est, 17, t, RWS)
    w.do(crypto, call(sel(17), Proto.TASK, words(TaskOp.MAP), items=(Item.obj(sel(16), int(RWS), dest=sel(20)),)))
    w.do(est, call(sel(17), Proto.TASK, words(TaskOp.MAP), items=(Item.obj(sel(20), int(RWS), dest=sel(21)),)))
    w.do(crypto, call(sel(EnvSlot.TASK), Proto.TASK,
                      words(TaskOp.UNMAP, UnmapMask.OTHER_SPACES, ItemKind.OBJECT, sel(16), 1, int(R))))
    for task, slot in ((est, 20), (t, 21)):
        assert w.do(task, call(sel(slot), timeout=timeouts(0, 0))).error is IpcError.ENOT_EXISTENT
        assert w.k.violations[-1].rule is Rule.NO_CAPABILITY
    assert w.k.lookup(crypto, sel(16)) is not None  # crypto keeps its own


# ------------------------------------------------------------ V9 delete with IPC in flight
def test_v9_deleting_a_gate_aborts_calls_in_flight():
    w = World()
    owner, caller = w.task("owner"), w.task("caller")
    gate = IpcGate(name="g")
    w.give(owner, 16, gate, SVR)
    w.give(caller, 16, gate, R | W)
    w.do(caller, call(sel(16)))  # unbound gate: the caller blocks
    assert w.last("caller") is None
    w.do(owner, call(sel(EnvSlot.TASK), Proto.TASK,
                     words(TaskOp.UNMAP, UnmapMask.DELETE_OBJ, ItemKind.OBJECT, sel(16), 1, int(SVR))))
    assert w.last("caller").error is IpcError.ENOT_EXISTENT
    assert w.k.lookup(caller, sel(16)) is None


# --------------------------------------------------------------- V10 label spoofing
def test_v10_the_label_comes_from_the_kernel():
    w = World()
    server, gw = w.task("crypto"), w.task("gw")
    gate = IpcGate(name="crypto")
    w.give(server, 16, gate, SVR)
    w.give(gw, 16, gate, R)
    w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x70, sel(EnvSlot.THREAD))))
    w.do(server, Invocation(IpcFlags.WAIT))
    w.do(gw, call(sel(16), 0x100, words(0x7), label=0x7 | 0x40))  # claims "I am est, badge 7"
    assert w.last("crypto").label == 0x70


# --------------------------------------------------------- V12 / V13 capability leaks
def test_v12_a_reply_cannot_push_a_cap_into_a_task_that_opened_no_window():
    w = World()
    server, client = w.task("crypto"), w.task("est")
    gate, keystore = IpcGate(name="crypto"), IpcGate(name="keystore")
    w.give(server, 16, gate, SVR)
    w.give(server, 17, keystore, RWS)
    w.give(client, 16, gate, R | W)
    w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x10, sel(EnvSlot.THREAD))))
    w.do(server, Invocation(IpcFlags.WAIT))
    before = w.tables()
    w.do(client, call(sel(16)))
    w.do(server, Invocation(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, MsgTag(0, 0, 1),
                            items=(Item.obj(sel(17), int(RWS)),)))
    assert w.last("crypto").error is IpcError.SEMSGCUT and w.last("est").error is IpcError.REMSGCUT
    assert w.tables()["est"] == before["est"]


def test_v13_s_is_masked_when_the_partner_cap_lacks_s():
    w = World()
    server, client = w.task("crypto"), w.task("est")
    gate, thing = IpcGate(name="crypto"), IpcGate(name="thing")
    w.give(server, 16, gate, SVR)
    w.give(client, 16, gate, R | W)  # no S on the cap used to reach crypto
    w.give(client, 17, thing, RWS)
    w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x10, sel(EnvSlot.THREAD))))
    w.do(server, Invocation(IpcFlags.WAIT, rcv_obj=sel(30)))
    w.do(client, call(sel(16), items=(Item.obj(sel(17), int(RWS)),)))
    assert CapRights(w.k.lookup(server, sel(30)).rights) == R | W


# -------------------------------------------------- V18 stale reply to a restarted client
def test_v18_a_late_reply_never_reaches_a_new_incarnation():
    w = World()
    server, old = w.task("crypto"), w.task("est")
    gate = IpcGate(name="crypto")
    w.give(server, 16, gate, SVR)
    w.give(old, 16, gate, R | W)
    w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x10, sel(EnvSlot.THREAD))))
    w.do(server, Invocation(IpcFlags.WAIT))
    w.do(old, call(sel(16)))
    w._collect(w.k.task_exited(old, 139, w.now))
    new = w.task("est")  # restarted: same name, same slots
    w.give(new, 16, gate, R | W)
    w.do(new, Invocation(IpcFlags.WAIT, timeout=timeouts(None, None)))
    n = w.count("est")
    res = w.do(server, Invocation(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, MsgTag(0, 1), words(42)))
    assert res.error is IpcError.ENOT_EXISTENT
    assert w.count("est") == n  # the new incarnation received nothing


# -------------------------------------------------------------- V22 notification floods
def test_v22_a_flood_of_triggers_coalesces_and_the_rpc_path_still_works():
    w = World()
    victim, flooder, caller = w.task("victim"), w.task("flooder"), w.task("caller")
    irq, gate = Irq(name="irq"), IpcGate(name="svc")
    w.give(victim, 16, irq, RWS)
    w.give(victim, 17, gate, SVR)
    w.give(flooder, 16, irq, R)
    w.give(caller, 17, gate, R | W)
    w.do(victim, call(sel(16), Proto.IRQ_SENDER, words(IrqOp.BIND, 0x10, sel(EnvSlot.THREAD))))
    w.do(victim, call(sel(17), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x20, sel(EnvSlot.THREAD))))
    for _ in range(10_000):
        w.do(flooder, Invocation(IpcFlags.SEND, sel(16), MsgTag(Proto.IRQ, 1), words(IrqOp.TRIGGER)))
    w.do(caller, call(sel(17)))
    w.do(victim, Invocation(IpcFlags.WAIT))
    assert w.last("victim").label == 0x10  # one IRQ delivery for 10,000 triggers ...
    w.do(victim, Invocation(IpcFlags.WAIT))
    assert w.last("victim").label == 0x20 | CapRights.W  # ... then the call: no starvation
    assert irq.coalesced == 9_999


# -------------------------------------------------------------- V21 quota exhaustion
def test_v21_factory_quota_is_per_factory():
    w = World()
    gw, est = w.task("gw"), w.task("est")
    w.give(gw, 16, Factory(name="gw-fab", quota=3), RWS)
    w.give(est, 16, Factory(name="est-fab", quota=3), RWS)
    results = [w.do(gw, call(sel(16), Proto.FACTORY, words(FactoryOp.GATE), rcv_obj=sel(20 + i))).tag.label
               for i in range(5)]
    assert results == [0, 0, 0, -Err.ENOMEM, -Err.ENOMEM]
    assert [v.rule for v in w.k.violations] == [Rule.FACTORY_QUOTA, Rule.FACTORY_QUOTA]
    assert w.do(est, call(sel(16), Proto.FACTORY, words(FactoryOp.GATE), rcv_obj=sel(20))).tag.label == 0


def test_v13_a_reply_keeps_s_only_if_the_caller_called_with_s():
    """Fiasco's reply capability carries the caller's rights: a client without S cannot be handed S."""
    w = World()
    server, client = w.task("crypto"), w.task("gw")
    gate, thing = IpcGate(name="crypto"), IpcGate(name="thing")
    w.give(server, 16, gate, SVR)
    w.give(server, 17, thing, RWS)
    w.give(client, 16, gate, R | W)
    w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x10, sel(EnvSlot.THREAD))))
    w.do(server, Invocation(IpcFlags.WAIT))
    w.do(client, call(sel(16), rcv_obj=sel(30)))
    w.do(server, Invocation(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, MsgTag(0, 0, 1),
                            items=(Item.obj(sel(17), int(RWS)),)))
    assert CapRights(w.k.lookup(client, sel(30)).rights) == R | W
