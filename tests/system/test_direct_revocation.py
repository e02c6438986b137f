"""Revoking in every way mid-conversation on a direct channel: no request the client issues after the
revoker's operation returned is served through the channel, and the client's next call gets what the
kernel path gives (docs/direct-channels.md). tasks/testing/direct_peer.py is the three parties."""
from __future__ import annotations

import re
import signal

import pytest

from kernel_model.direct import CutReason
from kernel_model.events import Rule
from kernel_model.objects import ThreadState


@pytest.fixture(autouse=True)
def _channels_as_the_image_says(monkeypatch):
    """These tests are about direct channels: the suite-wide switch (L4EMU_DIRECT) does not apply."""
    monkeypatch.delenv("L4EMU_DIRECT", raising=False)

IMAGE = """
name: direct-revoke
run: {{until: [client]}}
objects:
  svc: {{type: gate, direct: true}}
  rv: {{type: gate}}
  go: {{type: irq}}
  flag: {{type: dataspace, size: 4KiB}}
  shm: {{type: dataspace, size: 4KiB}}
tasks:
  server:
    program: testing.direct_peer
    args: [server]
    caps: {{svc: "svc:svr"{server_shm}}}
  revoker:
    program: testing.direct_peer
    args: [revoker, {op}]
    caps: {{svc: "svc:svr", rv: "rv:svr", go: "go:rws", flag: "flag:rw", shm: "shm:rw"}}
  client:
    program: testing.direct_peer
    args: [client]
    caps: {{rv: "rv:rw", go: "go:rw", flag: "flag:r"{client_shm}}}
"""
_CALL = re.compile(r"CALL (\d+) error (\w+) status (-?\d+) via (\w+)")
_SERVED = re.compile(r"SERVED (\d+) label (0x[0-9a-f]+) via (\w+)")


def _run(boot, op: str):
    shm = ', shm: "shm:rw"' if op == "retire" else ""
    system = boot(IMAGE.format(op=op, server_shm=shm, client_shm=shm))
    code = system.run(timeout=120, until=lambda: system.exited("client") is not None)
    text = system.console.text()
    assert system.exited("client") == 0, text
    assert any(line.startswith(f"MARKER {op} status 0") for line in system.lines("revoker")), text
    calls = [_CALL.match(line).groups() for line in system.lines("client") if _CALL.match(line)]
    served = [_SERVED.match(line).groups() for line in system.lines("server") if _SERVED.match(line)]
    # a call issued before the client read the marker may meet the revocation already (EARLY lines): it ran
    # concurrently with the revoker's operation; only what comes after the marker is judged
    assert len(calls) == 4, text
    del code
    return system, calls, served


@pytest.mark.parametrize("op", ["unmap", "delete"])
def test_a_revoked_capability_gets_the_kernel_paths_error_and_violation_and_nothing_passes(boot, op):
    system, calls, served = _run(boot, op)
    assert served == [], "a request issued after the revoker's operation returned was served"
    assert {(error, via) for _n, error, _s, via in calls} == {("ENOT_EXISTENT", "kernel")}
    client_violations = [v for v in system.kernel.violations if v.task.startswith("client")]
    assert client_violations and all(v.rule is Rule.NO_CAPABILITY for v in client_violations)
    assert len(client_violations) >= len(calls)


def test_reduced_rights_reach_the_server_only_with_the_new_label(boot):
    system, calls, served = _run(boot, "reduce")
    assert served, system.console.text()
    assert {label for _n, label, _via in served} == {"0x10"}  # W is gone from the label the server sees
    # (on the kernel path, or on a new channel opened by a kernel-path call after the cut: never the old one)
    assert system.kernel.directs.cut.get(CutReason.RIGHTS_CHANGED) == 1
    assert all(error == "OK" for _n, error, _s, _via in calls)


@pytest.mark.parametrize("op", ["rebind", "gone"])
def test_a_rebound_gate_takes_the_clients_next_call_to_its_new_server(boot, op):
    system, calls, served = _run(boot, op)
    assert served == [], "the old server served a request issued after the gate was rebound"
    if op == "rebind":
        # (possibly on a new direct channel: a call before the marker may already have opened one to the revoker)
        assert {(error, status) for _n, error, status, _via in calls} == {("OK", "77")}
    else:  # gone for good: the dead partner answers, no violation (the client did nothing wrong)
        assert {(error, via) for _n, error, _s, via in calls} == {("ENOT_EXISTENT", "kernel")}
        assert not [v for v in system.kernel.violations if v.task.startswith("client")]


def test_memory_retirement_sends_the_holders_next_call_through_the_kernel(boot):
    system, calls, served = _run(boot, "retire")
    assert all(error == "OK" for _n, error, _s, _via in calls), system.console.text()
    assert len(served) == 4  # the client's calls carry on (through the kernel, then perhaps a new channel)
    assert system.kernel.directs.cut.get(CutReason.MEMORY_RETIRING, 0) >= 1


KILL_IMAGE = """
name: direct-kill
objects:
  svc: {type: gate, direct: true}
tasks:
  server:
    program: testing.direct_peer
    args: [server]
    restart: {policy: always, backoff: {initial: 50ms, max: 50ms, factor: 1}}
    caps: {svc: "svc:svr"}
  client:
    program: testing.direct_peer
    args: [survivor]
    caps: {svc: "svc:rw"}
"""


def _streaming(system) -> None:
    system.run(timeout=120, until=lambda: "STREAMING" in system.lines("client"))
    assert "STREAMING" in system.lines("client"), system.console.text()


def test_a_killed_and_restarted_server_leaves_the_client_the_kernel_paths_error_then_its_new_incarnation(boot):
    system = boot(KILL_IMAGE)
    _streaming(system)
    old = system.kernel.task_by_name("server")
    signal.pidfd_send_signal(system.sup.process("server").pidfd, signal.SIGKILL)
    system.run(timeout=120, until=lambda: system.exited("client") is not None)
    text = system.console.text()
    assert system.exited("client") == 0, text
    (result,) = system.results("client")
    assert result["errors"] == ["ENOT_EXISTENT"] and result["after"] == 4, result  # as a call whose partner died
    assert not [v for v in system.kernel.violations if v.task.startswith("client")], text
    assert system.kernel.task_by_name("server").generation == old.generation + 1
    assert system.kernel.directs.cut.get(CutReason.SERVER_DEAD, 0) >= 1


def test_a_killed_client_costs_its_server_nothing(boot):
    system = boot(KILL_IMAGE)
    _streaming(system)
    signal.pidfd_send_signal(system.sup.process("client").pidfd, signal.SIGKILL)
    server = system.kernel.task_by_name("server").threads[0]
    system.run(timeout=120, until=lambda: server.state is ThreadState.RECEIVING and server.recv_from is None
               and system.exited("client") is not None)
    assert system.kernel.directs.cut.get(CutReason.CLIENT_DEAD, 0) == 1
    assert server.state is ThreadState.RECEIVING, system.console.text()  # dropped the end, back in the kernel
    assert system.exited("server") is None and not system.kernel.violations
