"""Frames an attacker writes to its own channel: each one an L4 error to that task, never a kernel crash.

The first four are the crashers an independent attack run found (issue 9): each killed the
kernel process before. Every delivered result is also encoded (``World`` does it), because
the host's next step is to send it.
"""
from __future__ import annotations

import dataclasses
import struct

import pytest

from capabilities.mapdb import Kind
from capabilities.rights import CapRights, MemRights
from kernel_model import invoke
from kernel_model.abi import (
    INVALID_CAP,
    KERNEL_LABEL,
    EnvSlot,
    Err,
    FactoryOp,
    GateOp,
    IpcError,
    IpcFlags,
    IrqOp,
    MsgTag,
    Proto,
    ThreadOp,
    sel,
    timeouts,
)
from kernel_model.events import Kill, Rule
from kernel_model.objects import Factory, IpcGate, Irq, KernelLog, Memory
from kernel_model.wire import Invocation, Item, ItemKind
from kernel_world import RWS, World, call, frame, others_unchanged, words

R, W, SVR = CapRights.R, CapRights.W, CapRights.parse("svr")


def served():
    """A server bound to a gate and waiting, an attacker holding a client cap, an honest client."""
    w = World()
    server, evil, honest = w.task("server"), w.task("evil"), w.task("honest")
    gate = IpcGate(name="svc")
    w.give(server, 16, gate, SVR)
    w.give(evil, 16, gate, R | W)
    w.give(honest, 16, gate, R | W)
    assert w.do(server,
                call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x10, sel(EnvSlot.THREAD)))).tag.label == 0
    w.do(server, Invocation(IpcFlags.WAIT))
    return w, server, evil, honest


def honest_call_still_works(w, server, honest) -> None:
    w.do(honest, call(sel(16), data=words(7)))
    assert w.last("server").label == 0x10 | W
    w.do(server, Invocation(IpcFlags.REPLY_AND_WAIT, INVALID_CAP, MsgTag(0, 1), words(8), timeout=timeouts(0, None)))
    assert w.last("honest").error is IpcError.OK and w.last("honest").data == words(8)


# ------------------------------------------------------------------ absolute timeouts
@pytest.mark.parametrize("half,error", [("send", IpcError.SETIMEOUT), ("receive", IpcError.RETIMEOUT)])
def test_an_absolute_timeout_is_refused_with_the_l4_timeout_error(half, error):
    w, server, evil, honest = served()
    timeout = 0x8000_0000 if half == "send" else 0x0000_8000
    n = w.count("server")
    res = w.raw(evil, frame(timeout=timeout, data=words(1), tag=(0x100 << 16) | 1))
    assert res.error is error
    assert w.k.violations[-1].rule is Rule.ABSOLUTE_TIMEOUT and w.k.violations[-1].task == "evil"
    assert w.count("server") == n  # nothing reached the server: refused before the send phase
    honest_call_still_works(w, server, honest)


def test_an_absolute_receive_timeout_on_reply_and_wait_keeps_the_reply_capability():
    w, server, evil, honest = served()
    w.do(honest, call(sel(16)))
    res = w.raw(server, frame(IpcFlags.REPLY_AND_WAIT, INVALID_CAP, 0, timeout=0x0400_8000))
    assert res.error is IpcError.RETIMEOUT and w.last("honest") is None  # nothing acted on
    w.do(server, Invocation(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, MsgTag(0), timeout=timeouts(0, None)))
    assert w.last("honest").error is IpcError.OK  # the reply capability survived


# ------------------------------------------------------------------ message-tag bounds
@pytest.mark.parametrize("tag,n_items,why", [
    ((0x100 << 16) | (1 << 6) | 62, 1, "more than 63 registers"),  # 62 words + 2 x 1 item
    ((0x100 << 16) | (31 << 6) | 63, 31, "more than 63 registers"),
    ((0x100 << 16) | (0 << 6) | 1, 1, "announces 0 typed items"),
    ((0x100 << 16) | (2 << 6) | 1, 1, "announces 2 typed items"),
])
def test_a_tag_beyond_the_message_registers_is_a_malformed_frame(tag, n_items, why):
    w, server, evil, honest = served()
    w.give(evil, 17, IpcGate(name="thing"), RWS)
    items = [(ItemKind.OBJECT, 0, int(RWS), 0, sel(17), 1, 0)] * n_items
    for flags in (IpcFlags.CALL, IpcFlags.SEND, IpcFlags.NONE):  # NONE: the kernel echoes the tag back
        res = w.raw(evil, frame(flags, tag=tag, items=items, data=bytes(8)))
        assert res.error is IpcError.SEABORTED
        assert w.k.violations[-1].rule is Rule.MALFORMED_FRAME and why in w.k.violations[-1].detail
    honest_call_still_works(w, server, honest)


@pytest.mark.parametrize("field,value", [
    ("grant", 2), ("pad", 1), ("rights", 0x100), ("kind", 3), ("wrap", None),
])
def test_every_item_field_is_range_checked(field, value):
    w, server, evil, honest = served()
    item = {"kind": ItemKind.MEMORY, "grant": 0, "rights": 4, "pad": 0, "index": 0x1000, "size": 0x1000, "dest": 0}
    if field == "wrap":
        item.update(index=(1 << 64) - 0x1000, size=0x2000)
    else:
        item[field] = value
    res = w.raw(evil, frame(tag=(0x100 << 16) | (1 << 6), items=[tuple(item.values())]))
    assert res.error is IpcError.SEABORTED and w.k.violations[-1].rule is Rule.MALFORMED_FRAME
    honest_call_still_works(w, server, honest)


@pytest.mark.parametrize("mem", [(0x1001, 0x1000), (0x1000, 0x10), ((1 << 64) - 0x1000, 0x2000)],
                         ids=["unaligned-base", "unaligned-size", "wraps"])
def test_a_receive_window_must_be_page_aligned_inside_the_address_space(mem):
    w, server, evil, honest = served()
    res = w.raw(evil, frame(mem=mem))
    assert res.error is IpcError.SEABORTED and w.k.violations[-1].rule is Rule.MALFORMED_FRAME


# ------------------------------------------------------------------- labels: unsigned, top half reserved
@pytest.mark.parametrize("label", [1 << 63, (1 << 64) - 4, KERNEL_LABEL | 0x10])
def test_binding_a_gate_with_a_label_in_the_kernels_half_is_einval(label):
    w = World()
    server = w.task("server")
    gate = IpcGate(name="svc")
    w.give(server, 16, gate, SVR)
    res = w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, label, sel(EnvSlot.THREAD))))
    assert res.tag.label == -Err.EINVAL and gate.thread is None
    assert w.k.violations[-1].rule is Rule.RESERVED_LABEL


@pytest.mark.parametrize("label", [1 << 63, (1 << 64) - 1])
def test_binding_an_irq_with_a_label_in_the_kernels_half_is_einval(label):
    w = World()
    t = w.task("t")
    irq = Irq(name="irq")
    w.give(t, 16, irq, RWS)
    res = w.do(t, call(sel(16), Proto.IRQ_SENDER, words(IrqOp.BIND, label, sel(EnvSlot.THREAD))))
    assert res.tag.label == -Err.EINVAL and irq.thread is None
    assert w.k.violations[-1].rule is Rule.RESERVED_LABEL


def test_a_label_just_below_the_kernels_half_is_delivered_whole():
    w = World()
    server, client = w.task("server"), w.task("client")
    gate, irq = IpcGate(name="svc"), Irq(name="irq")
    w.give(server, 16, gate, SVR)
    w.give(server, 17, irq, RWS)
    w.give(client, 16, gate, R | W)
    top = KERNEL_LABEL - 4
    assert w.do(server,
                call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, top, sel(EnvSlot.THREAD)))).tag.label == 0
    w.do(server, Invocation(IpcFlags.WAIT))
    w.do(client, call(sel(16)))
    assert w.last("server").label == top | W  # encoded unsigned: no struct.error
    info = w.do(server, Invocation(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, MsgTag(0), timeout=timeouts(0, None)))
    info = w.do(server, call(sel(16), Proto.KOBJECT, words(GateOp.GET_INFOS)))
    assert struct.unpack("<Q", info.data)[0] == top  # a full word, not the 48-bit tag label
    assert w.do(server, call(sel(17), Proto.IRQ_SENDER, words(IrqOp.BIND, top, sel(EnvSlot.THREAD)))).tag.label == 0


def test_a_thread_to_thread_label_in_the_kernels_half_is_refused():
    w = World()
    a, b = w.task("a"), w.task("b")
    w.give(a, 16, b.threads[0], RWS)
    w.do(b, Invocation(IpcFlags.WAIT))
    res = w.do(a, Invocation(IpcFlags.SEND, sel(16), MsgTag(0x100), label=KERNEL_LABEL | 0x8))
    assert res.error is IpcError.SEABORTED and w.k.violations[-1].rule is Rule.RESERVED_LABEL
    assert w.last("b") is None
    w.do(a, Invocation(IpcFlags.SEND, sel(16), MsgTag(0x100), label=0x8))
    assert w.last("b").label == 0x8


# ----------------------------------------------------------- boot records handed to the kernel
@pytest.mark.parametrize("blob,why", [
    (b"[" * 5000 + b"]" * 5000, "not JSON"),  # deep nesting: RecursionError in json
    (b'{"program": "hello.ping_client", "name": "../../../etc"}', "name"),
    (b'{"program": "os; rm -rf /", "name": "x"}', "program"),
    (b'{"program": "hello.ping_client", "args": "x"}', "args"),
    (b'["program"]', "JSON object"),
])
def test_a_bad_boot_record_is_einval(blob, why):
    w = World()
    t = w.task("t")
    w.give(t, 16, Factory(name="fab", quota=10), RWS)
    w.do(t, call(sel(16), Proto.FACTORY, words(FactoryOp.TASK), rcv_obj=sel(20)))
    w.do(t, call(sel(16), Proto.FACTORY, words(FactoryOp.THREAD, sel(20)), rcv_obj=sel(21)))
    data = words(ThreadOp.EX_REGS) + blob + bytes(-len(blob) % 8)
    res = w.do(t, Invocation(IpcFlags.CALL, sel(21), MsgTag(Proto.THREAD, 63), data))
    assert res.tag.label == -Err.EINVAL
    assert w.k.violations[-1].rule is Rule.BAD_ARGUMENT and why in w.k.violations[-1].detail


# ------------------------------------------------------------------- the last-resort boundary
def test_a_kernel_bug_faults_only_the_task_that_triggered_it(monkeypatch):
    w, server, evil, honest = served()
    w.give(evil, 17, KernelLog(name="log"), RWS)
    before = w.tables()

    def slip(k, thread, cap, inv):
        raise KeyError("a future slip")

    monkeypatch.setitem(invoke.KERNEL_KINDS, KernelLog,
                        dataclasses.replace(invoke.KERNEL_KINDS[KernelLog], handler=slip))
    w.do(evil, call(sel(17), Proto.LOG, words(0, 0)))
    assert any(isinstance(e, Kill) and e.task is evil for e in w.effects)
    bug = w.k.violations[-1]
    assert bug.rule is Rule.KERNEL_BUG and bug.task == "evil" and "KeyError" in bug.detail
    assert not evil.alive
    others_unchanged(w, before, "evil")
    honest_call_still_works(w, server, honest)


# ------------------------------------------- found by the fuzzer: mapping back onto one's own source
def pair():
    """a calls b through a gate b serves; a owns two pages of memory and a cap."""
    w = World()
    a, b = w.task("a"), w.task("b")
    gate = IpcGate(name="pair")
    w.give(b, 16, gate, SVR)
    w.give(a, 16, gate, R | W | CapRights.S)
    w.give(a, 22, IpcGate(name="thing"), RWS)
    mem = Memory(name="ram", size=0x2000, phys=0x300000)
    w.k.db.insert_root(a.space, Kind.MEMORY, 0x4000_0000, mem, int(MemRights.R | MemRights.W), size=0x2000)
    assert w.do(b, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x20, sel(EnvSlot.THREAD)))).tag.label == 0
    return w, a, b


def exchange(w, a, b, give, back, *, rcv_obj=INVALID_CAP, window=(0, 0)):
    w.do(b, Invocation(IpcFlags.WAIT, rcv_obj=rcv_obj, rcv_mem_base=window[0], rcv_mem_size=window[1]))
    w.do(a, Invocation(IpcFlags.CALL, sel(16), MsgTag(0x100, 0, len(give)), items=give, rcv_obj=rcv_obj,
                       rcv_mem_base=window[0], rcv_mem_size=window[1]))
    return w.do(b, Invocation(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, MsgTag(0, 0, len(back)), items=back,
                              timeout=timeouts(0, None)))


def test_mapping_memory_back_onto_the_mapping_it_derives_from_fails_cleanly():
    """b maps a's own pages back into a's window over the mapping they derive from: the receive window is
    flushed first, which would revoke the source half-way. It was a ValueError in the kernel."""
    w, a, b = pair()
    window = (0x4000_0000, 0x2000)
    exchange(w, a, b, (Item.mem(0x4000_0000, 0x2000, int(MemRights.R)),), (), window=window)
    assert w.k.db.count(b.space, Kind.MEMORY) == 1 and w.last("a").error is IpcError.OK
    before = w.tables()
    res = exchange(w, a, b, (), (Item.mem(0x4000_1000, 0x1000, int(MemRights.R)),), window=window)
    assert res.error is IpcError.SEMAPFAILED and w.last("a").error is IpcError.REMAPFAILED
    assert w.tables() == before and not [v for v in w.k.violations if v.rule is Rule.KERNEL_BUG]


def test_sending_a_cap_back_into_the_slot_it_derives_from_fails_cleanly():
    w, a, b = pair()
    exchange(w, a, b, (Item.obj(sel(22), int(RWS)),), (), rcv_obj=sel(22))
    assert w.k.lookup(b, sel(22)).parent is w.k.lookup(a, sel(22))
    before = w.tables()
    res = exchange(w, a, b, (), (Item.obj(sel(22), int(RWS)),), rcv_obj=sel(22))
    assert res.error is IpcError.SEMAPFAILED and w.last("a").error is IpcError.REMAPFAILED
    assert w.tables() == before and not [v for v in w.k.violations if v.rule is Rule.KERNEL_BUG]
