"""Attacks on shared memory through the memfds the kernel passes with a mapping (issue 9, host half):
a task can neither crash the kernel by overmapping nor resize a dataspace it shares with a server."""
from __future__ import annotations

OVERMAP = """
name: overmap
run: {until: [evil]}
objects:
  shm: {type: dataspace, size: 8KiB}
tasks:
  evil:
    program: testing.adversary
    args: ["overmap:shm,3", "map:shm,w"]
    caps: {shm: "shm:rw"}
"""


def test_mapping_one_dataspace_again_and_again_at_one_window_is_a_legal_overmap(boot):
    system = boot(OVERMAP)
    assert system.run(timeout=60) == 0, system.console.text()
    overmap, remap = system.results("evil")
    assert overmap["errors"] == ["OK", "OK", "OK"] and overmap["fds"] == 3, overmap
    assert bytes.fromhex(remap["first"])[:8] == b"round002"  # the last mapping is the dataspace's live backing
    assert system.exited("evil") == 0


TRUNCATE = """
name: truncate
run: {until: [evil]}
objects:
  svc: {type: gate}
  shm: {type: dataspace, size: 4KiB}
tasks:
  owner:
    program: testing.mem_owner
    caps: {svc: "svc:svr", shm: "shm:rw"}
  evil:
    program: testing.adversary
    args: ["truncate:shm", "truncate:shm,0x4000000", "recvmem:svc", "call:svc", "callblob:svc",
           "truncate:alloc", "truncate:alloc,0x4000000", "clear:allocated"]
    caps: {svc: "svc:rw", shm: "shm:rw"}
"""


def test_a_client_cannot_shrink_or_grow_a_dataspace_it_shares_with_a_server(boot):
    system = boot(TRUNCATE)
    assert system.run(timeout=60) == 0, system.console.text()
    shrink, grow, recv, _revoke, report, shrink_own, grow_own, clear = system.results("evil")
    for attempt in (shrink, grow, shrink_own, grow_own):  # sealed: F_SEAL_SHRINK | F_SEAL_GROW
        assert attempt == {**attempt, "truncated": False, "errno": 1}, attempt  # EPERM
    assert recv["first"] == "secret-1" and report["blob"] == "secret-2"  # the server lived on ...
    assert "revoked (0); wrote secret-2" in system.lines("owner")
    assert system.sup.process("owner").status is None  # still serving
    assert clear["error"] == "OK" and clear["status"] == 0  # ... and so did Moe, clearing a dataspace


FLOOD = """
name: flood
run: {until: [client]}
objects:
  svc: {type: gate}
tasks:
  server:
    program: testing.echo_server
    caps: {svc: "svc:svr"}
  flooder:
    program: testing.flooder
    args: ["32"]
  denier:
    program: testing.flooder
    args: ["8,deny"]
  client:
    program: testing.bench_client
    args: ["40", "10"]
    caps: {svc: "svc:rw"}
"""


def test_an_honest_client_is_served_while_two_tasks_flood_the_kernel(boot):
    system = boot(FLOOD)
    assert system.run(timeout=120) == 0, system.console.text()[-3000:]
    assert system.exited("client") == 0 and any(line.startswith("BENCH ") for line in system.lines("client"))
    served = system.kernel.ipc_by_task
    assert served["flooder"] > 0 and served["denier"] > 0  # they really flooded, and were served too
    assert system.sup.process("flooder").status is None  # a flooder is slowed, not killed
