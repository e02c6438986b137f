"""kernel_model.direct + direct_paths: opening a direct channel on a checked call, the doorbell, and every
reason a channel is cut (with the cut ahead of every other effect of the step that caused it). Pure."""
from __future__ import annotations

import pytest

from capabilities.mapdb import Kind
from capabilities.rights import CapRights, MemRights
from kernel_model.abi import (
    INVALID_CAP,
    EnvSlot,
    GateOp,
    IpcError,
    IpcFlags,
    MsgTag,
    Proto,
    TaskOp,
    UnmapMask,
    sel,
    timeouts,
)
from kernel_model.direct import MAX_PER_CLIENT, CutReason, DirectMode, check
from kernel_model.events import Deliver, DirectCut, DirectOpen, Pending
from kernel_model.objects import IpcGate, Memory
from kernel_model.wire import Invocation, Item, ItemKind
from kernel_world import SVR, World, call, words

GATE = sel(16)


class Fixture:
    """owner (Moe's part: holds the gate with every right, maps it on), server (bound), client (rw)."""

    def __init__(self, *, direct: bool = True, mode: DirectMode = DirectMode.OPT_IN):
        self.w = w = World()
        self.k = w.k
        self.k.directs.mode = mode
        self.owner, self.server, self.client = w.task("owner"), w.task("server"), w.task("client")
        self.gate = IpcGate(name="svc", direct=direct)
        root, _ = self.k.db.insert_root(self.owner.space, Kind.OBJECT, 16, self.gate, int(SVR | CapRights.D))
        self.k.db.map(root, self.server.space, 16, int(SVR))
        self.k.db.map(root, self.client.space, 16, int(CapRights.R | CapRights.W))
        assert w.do(self.server, call(GATE, Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x10, sel(EnvSlot.THREAD)))
                    ).tag.label == 0
        self.wait()

    def wait(self):
        return self.w.do(self.server, Invocation(IpcFlags.WAIT))

    def reply_and_wait(self):
        return self.w.do(self.server, Invocation(IpcFlags.REPLY_AND_WAIT, INVALID_CAP, MsgTag(0), b"",
                                                 timeout=timeouts(0, None)))

    def call(self, who=None, **kw):
        return self.w.do(who or self.client, call(GATE, data=words(1), **kw))

    def opened(self) -> list[DirectOpen]:
        return [e for e in self.w.effects if isinstance(e, DirectOpen)]

    def cuts(self) -> list[DirectCut]:
        return [e for e in self.w.effects if isinstance(e, DirectCut)]

    def open_channel(self) -> DirectOpen:
        self.call()
        (opened,) = self.opened()
        self.reply_and_wait()
        assert self.w.last("client").error is IpcError.OK
        return opened

    def assert_cut_first(self, reason: CutReason) -> None:
        """The step's effects start with the cut: it is carried out before any result goes out."""
        effects = self.w.effects
        assert isinstance(effects[0], DirectCut), effects
        assert [c.reason for c in self.cuts()] == [reason]
        assert not self.k.directs.channels


def test_a_call_through_a_direct_gate_opens_a_channel_before_the_server_gets_the_message():
    f = Fixture()
    f.call()
    effects = f.w.effects
    (opened,) = f.opened()
    assert (opened.client, opened.selector, opened.server) == (f.client, GATE, f.server)
    assert opened.label == 0x10 | int(CapRights.W)  # what the server sees on the kernel path too
    deliver = next(i for i, e in enumerate(effects) if isinstance(e, Deliver) and e.task is f.server)
    assert effects.index(opened) < deliver
    assert effects[deliver].result.label == opened.label
    chan = f.k.directs.channels[opened.handle]
    assert check(chan, f.k.db) is None


@pytest.mark.parametrize("case", ["plain gate", "off", "trace", "item", "rcv_cap", "rcv_mem", "send timeout 0",
                                  "receive timeout 0", "send only"])
def test_no_channel_when_the_call_or_the_gate_does_not_qualify(case):
    f = Fixture(direct=case != "plain gate", mode=DirectMode.OFF if case == "off" else DirectMode.OPT_IN)
    f.k.trace = case == "trace"
    kw: dict = {}
    if case == "item":
        kw["items"] = (Item.obj(sel(EnvSlot.THREAD), int(CapRights.R)),)
    elif case == "rcv_cap":
        kw["rcv_obj"] = sel(30)
    elif case == "rcv_mem":
        kw.update(rcv_mem_base=0x1000_0000, rcv_mem_size=0x1000)
    elif case == "send timeout 0":
        kw["timeout"] = timeouts(0, None)
    elif case == "receive timeout 0":
        kw["timeout"] = timeouts(None, 0)
    if case == "send only":
        f.w.do(f.client, Invocation(IpcFlags.SEND, GATE, MsgTag(0x100, 1), words(1)))
    else:
        f.call(**kw)
    assert not f.opened() and not f.k.directs.channels


def test_forced_on_every_gate_gets_channels():
    f = Fixture(direct=False, mode=DirectMode.ALL)
    f.call()
    assert len(f.opened()) == 1


def test_unmapping_the_clients_cap_cuts_the_channel_first():
    f = Fixture()
    f.open_channel()
    res = f.w.do(f.client, call(sel(EnvSlot.TASK), Proto.TASK, words(
        TaskOp.UNMAP, UnmapMask.ALL_SPACES, ItemKind.OBJECT, GATE, 1, int(CapRights.R | CapRights.W))))
    assert res.tag.label == 0
    f.assert_cut_first(CutReason.CAP_GONE)


def test_reducing_the_clients_rights_cuts_the_channel():
    f = Fixture()
    f.open_channel()
    f.w.do(f.owner, call(sel(EnvSlot.TASK), Proto.TASK, words(
        TaskOp.UNMAP, UnmapMask.OTHER_SPACES, ItemKind.OBJECT, GATE, 1, int(CapRights.W))))
    assert f.w.rights(f.client, GATE) == CapRights.R
    f.assert_cut_first(CutReason.RIGHTS_CHANGED)


def test_deleting_the_gate_cuts_the_channel():
    f = Fixture()
    f.open_channel()
    f.w.do(f.owner, call(sel(EnvSlot.TASK), Proto.TASK, words(
        TaskOp.UNMAP, UnmapMask.DELETE_OBJ, ItemKind.OBJECT, GATE, 1, int(SVR | CapRights.D))))
    assert not f.gate.alive
    f.assert_cut_first(CutReason.CAP_GONE)  # deleting empties every cap to it: the client's first


def test_rebinding_the_gate_cuts_the_channel():
    f = Fixture()
    f.open_channel()
    other = f.w.task("other")
    f.w.give(other, 16, f.gate, SVR)
    f.w.do(other, call(GATE, Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x20, sel(EnvSlot.THREAD))))
    f.assert_cut_first(CutReason.GATE_REBOUND)


def test_the_server_gone_for_good_cuts_the_channel():
    f = Fixture()
    f.open_channel()
    f.w.do(f.owner, call(GATE, Proto.KOBJECT, words(GateOp.SERVER_GONE)))
    f.assert_cut_first(CutReason.GATE_REBOUND)


def test_the_server_dying_cuts_the_channel():
    f = Fixture()
    f.open_channel()
    f.w._collect(f.k.task_exited(f.server, 1, 0))
    f.assert_cut_first(CutReason.SERVER_DEAD)


def test_the_client_killed_cuts_the_channel():
    f = Fixture()
    f.open_channel()
    f.k.kill_task(f.client)
    f.w._collect(f.k._take())
    f.assert_cut_first(CutReason.CLIENT_DEAD)


def test_memory_retirement_cuts_the_channels_of_its_holders():
    f = Fixture()
    f.open_channel()
    mem = Memory(name="shm", size=0x1000)
    root, _ = f.k.db.insert_root(f.owner.space, Kind.MEMORY, 0x1000_0000, mem, int(MemRights.R | MemRights.W),
                                 size=0x1000)
    f.k.db.map(root, f.client.space, 0x2000_0000, int(MemRights.R | MemRights.W), size=0x1000)
    f.k.db.map(root, f.server.space, 0x2000_0000, int(MemRights.R | MemRights.W), size=0x1000)
    f.w.do(f.client, call(sel(EnvSlot.TASK), Proto.TASK, words(
        TaskOp.UNMAP, UnmapMask.ALL_SPACES, ItemKind.MEMORY, 0x2000_0000, 0x1000, int(MemRights.R))))
    assert f.k._retiring or any(type(e).__name__ == "MemoryRetired" for e in f.w.effects)
    f.assert_cut_first(CutReason.MEMORY_RETIRING)


def test_a_new_kernel_call_on_the_same_selector_replaces_the_channel():
    f = Fixture()
    first = f.open_channel()
    f.call()
    (second,) = f.opened()
    assert second.handle != first.handle
    assert [c.handle for c in f.cuts()] == [first.handle]
    assert f.w.effects.index(f.cuts()[0]) == 0


def test_nothing_unrelated_cuts_a_channel():
    f = Fixture()
    f.open_channel()
    bystander = f.w.task("bystander")
    f.w.give(bystander, 17, IpcGate(name="x"), SVR)
    f.w.do(bystander, call(sel(17), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x40, sel(EnvSlot.THREAD))))
    f.w._collect(f.k.task_exited(bystander, 0, 0))
    assert not f.cuts() and len(f.k.directs.channels) == 1


def test_a_channel_opened_and_invalidated_in_one_step_never_reaches_the_host():
    f = Fixture()
    f.call()
    handle = f.opened()[0].handle
    chan = f.k.directs.channels[handle]
    f.k.directs.channels[handle].announced = False
    f.k.directs.epoch += 1
    f.k.db.unmap(chan.node, include_self=True)
    f.k._effects.append(DirectOpen(handle, f.client, GATE, f.server, 0))
    effects = f.k._take()
    assert not [e for e in effects if isinstance(e, (DirectOpen, DirectCut))]


def test_the_doorbell_rings_once_for_a_server_idling_in_user_space_until_it_receives_again():
    f = Fixture()
    f.open_channel()
    f.call()  # the server has a message and runs (it serves it in user space)
    others = [f.w.task(f"c{i}") for i in range(2)]
    for c in others:
        f.w.give(c, 16, f.gate, CapRights.R | CapRights.W)
    f.call(others[0])
    assert [e.task for e in f.w.effects if isinstance(e, Pending)] == [f.server]
    f.call(others[1])
    assert not [e for e in f.w.effects if isinstance(e, Pending)]  # edge-triggered: once
    f.reply_and_wait()  # a receive: it takes the first queued caller, and the bell is armed again
    f.w.do(f.client, call(GATE, data=words(2)))  # queues behind the second one
    assert [e.task for e in f.w.effects if isinstance(e, Pending)] == [f.server]


def test_no_doorbell_for_a_server_without_channels():
    f = Fixture(direct=False)
    f.call()
    other = f.w.task("c1")
    f.w.give(other, 16, f.gate, CapRights.R | CapRights.W)
    f.call(other)
    assert not [e for e in f.w.effects if isinstance(e, Pending)]


def test_a_client_opens_at_most_its_share_of_channels():
    f = Fixture()
    for i in range(MAX_PER_CLIENT + 3):
        f.w.give(f.client, 40 + i, f.gate, CapRights.R | CapRights.W)
        f.w.do(f.client, call(sel(40 + i), data=words(i)))
        f.reply_and_wait()
    assert len(f.k.directs.channels) == MAX_PER_CLIENT
