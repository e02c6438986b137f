"""The typed boot record (kernel_model/bootrecord.py): one codec, validated by the kernel, read through attributes."""
from __future__ import annotations

import dataclasses
import json

import pytest

from capabilities.rights import CapRights
from kernel_model.abi import Err, FactoryOp, IpcFlags, MsgTag, Proto, ThreadOp, sel
from kernel_model.bootrecord import BootModule, BootRecord, BootRecordError, ConfinementPolicy, RamRegion
from kernel_model.events import Rule, Spawn
from kernel_model.objects import Factory
from kernel_model.wire import Boot, Invocation, WireError, decode_kernel_frame
from kernel_world import RWS, World, call, words


def test_a_record_round_trips_through_the_boot_frame_with_every_part():
    policy = ConfinementPolicy(allow_fds=(3,), uid=61001, hidden_paths=("/srv/keys",), required=frozenset({"env"}))
    record = BootRecord("netproxy.task", "netproxy", ("--x",), {"log": sel(5)}, first_free=40, config={"a": [1]},
                        generation=2, modules=(BootModule("image", 0x8000_0000_0000, 100, 4096),),
                        ram=RamRegion(0x100000, 1 << 20), workdir="/run/netproxy", network=("127.0.0.1:8443",),
                        confine=dataclasses.replace(policy, network=True), report_confinement=True, fault_page=True)
    frame = decode_kernel_frame(Boot(record).encode())
    assert isinstance(frame, Boot) and frame.record == record


def test_network_authority_travels_once_and_the_policy_follows_it():
    record = BootRecord("p", confine=ConfinementPolicy(network=True))
    doc = json.loads(record.encode())
    assert "network" not in doc["confine"] and "network" not in doc  # no endpoints: no second copy anywhere
    assert BootRecord.decode(record.encode()).confine == ConfinementPolicy(network=False)
    with_net = dataclasses.replace(record, network=("10.0.0.1:1",))
    assert BootRecord.decode(with_net.encode()).confine == ConfinementPolicy(network=True)


def test_a_task_sets_only_the_task_part_of_a_record():
    sent = json.dumps({"program": "hello.ping", "name": "x", "args": ["a"], "caps": {"c": 65536},
                       "root": True, "generation": 99, "network": ["1.2.3.4:5"], "workdir": "/",
                       "confine": {"seccomp": False}, "fault_page": True, "modules": [{"name": "k"}]}).encode()
    record = BootRecord.from_task(sent)
    assert record == BootRecord("hello.ping", "x", ("a",), {"c": 65536})


@pytest.mark.parametrize("blob,why", [
    (b"\xff", "not JSON"),
    (b"[1]", "JSON object"),
    (b'{"program": "a b"}', "program"),
    (b'{"program": "p", "args": [1]}', "args"),
    (b'{"program": "p", "caps": {"c": "x"}}', "caps"),
    (b'{"program": "p", "config": []}', "config"),
    (b'{"program": "p", "first_free": -1}', "first_free"),
])
def test_a_malformed_task_record_names_what_is_wrong(blob, why):
    with pytest.raises(BootRecordError, match=why):
        BootRecord.from_task(blob)


@pytest.mark.parametrize("doc,why", [
    ({"program": "p", "confine": {"netwrok": True}}, "netwrok"),
    ({"program": "p", "confine": {"uid": "0"}}, "uid"),
    ({"program": "p", "modules": [{"name": "m"}]}, "address"),
    ({"program": "p", "network": "x"}, "network"),
])
def test_a_malformed_boot_frame_is_a_wire_error(doc, why):
    with pytest.raises(WireError, match=why):
        decode_kernel_frame(bytes([3]) + bytes(7) + json.dumps(doc).encode())


def test_the_kernel_validates_a_started_tasks_record_and_adds_its_own_part():
    w = World()
    moe = w.task("moe")
    w.give(moe, 16, Factory(name="fab", quota=10), RWS)
    w.do(moe, call(sel(16), Proto.FACTORY, words(FactoryOp.TASK), rcv_obj=sel(20)))
    w.do(moe, call(sel(16), Proto.FACTORY, words(FactoryOp.THREAD, sel(20)), rcv_obj=sel(21)))
    blob = json.dumps({"program": "hello.ping", "name": "t", "root": True, "network": ["1.2.3.4:5"],
                       "confine": {"seccomp": False}}).encode()
    blob += bytes(-len(blob) % 8)
    res = w.do(moe, Invocation(IpcFlags.CALL, sel(21), MsgTag(Proto.THREAD, 63), words(ThreadOp.EX_REGS) + blob))
    assert res.tag.label == 0
    spawn = next(e for e in w.effects if isinstance(e, Spawn))
    assert spawn.record == BootRecord("hello.ping", "t", generation=1)  # no root, no network, no confinement


def test_the_kernel_answers_a_malformed_record_with_einval_and_a_violation():
    w = World()
    t = w.task("t")
    w.give(t, 16, Factory(name="fab", quota=10), CapRights.R | CapRights.S)
    w.do(t, call(sel(16), Proto.FACTORY, words(FactoryOp.TASK), rcv_obj=sel(20)))
    w.do(t, call(sel(16), Proto.FACTORY, words(FactoryOp.THREAD, sel(20)), rcv_obj=sel(21)))
    blob = b'{"program": "p", "caps": {"c": "x"}}'
    blob += bytes(-len(blob) % 8)
    res = w.do(t, Invocation(IpcFlags.CALL, sel(21), MsgTag(Proto.THREAD, 63), words(ThreadOp.EX_REGS) + blob))
    assert res.tag.label == -Err.EINVAL
    assert w.k.violations[-1].rule is Rule.BAD_ARGUMENT and "caps" in w.k.violations[-1].detail
