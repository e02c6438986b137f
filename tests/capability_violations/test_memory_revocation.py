"""Memory revocation is real: a task whose mapping was revoked cannot read or write the live data,
even if its code ignores the unmap; the remaining holders keep theirs (issue 4 item 3)."""
from __future__ import annotations

IMAGE = """
name: revoke
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
    args: ["recvmem:svc", "ignore_revoke", "peek", "call:svc", "peek", "poke:pwned!!", "callblob:svc"]
    caps: {svc: "svc:rw"}
"""


def test_a_task_that_ignores_unmap_loses_the_live_data_and_the_owner_keeps_it(boot):
    system = boot(IMAGE)
    assert system.run(timeout=60) == 0, system.console.text()
    recv, ignore, before, revoke, after, poke, report = system.results("evil")
    assert recv["mapped"] and recv["first"] == "secret-1"
    assert before["data"] == "secret-1"  # shared: the attacker saw it while it held the mapping
    assert revoke["error"] == "OK"
    assert after["data"] == "secret-1"  # its stale copy never sees the owner's new data ...
    assert report["blob"] == "secret-2"  # ... and its write never reaches the owner's data
    assert "revoked (0); wrote secret-2" in system.lines("owner")
