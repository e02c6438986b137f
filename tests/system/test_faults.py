"""Denials and crashes in a booted system: errors are values, violations are recorded, nothing hangs."""
from __future__ import annotations

import signal

from kernel_model.events import Rule

ADVERSARY = """
name: attack
run:
  until: [evil]
objects:
  svc: {type: gate}
  shm: {type: dataspace, size: 8KiB}
tasks:
  server:
    program: testing.stall_server
    caps: {svc: "svc:svr", shm: "shm:rw"}
  evil:
    program: testing.adversary
    args: %s
    caps: {svc: "svc:rw", shm: "shm:r"}
"""


def image(*commands: str) -> str:
    return ADVERSARY % ("[" + ", ".join(f'"{c}"' for c in commands) + "]")


def test_undeclared_selector_gives_enot_existent_and_a_violation(boot):
    system = boot(image("call:0x50000", "call:0x7000"))
    assert system.run(timeout=60) == 0
    results = system.results("evil")
    assert [r["error"] for r in results] == ["ENOT_EXISTENT", "ENOT_EXISTENT"]
    denied = [v for v in system.kernel.violations if v.task == "evil"]
    assert [(v.selector, v.rule) for v in denied] == [(0x50000, Rule.NO_CAPABILITY), (0x7000, Rule.NO_CAPABILITY)]
    assert all(v.error == "L4_IPC_ENOT_EXISTENT" for v in denied)


def test_killing_a_server_mid_call_fails_the_callers_ipc(boot):
    system = boot(image("call:svc,0x100,1"))
    system.run_until_logged("not answering")
    before = system.kernel.dump()["evil"]
    server = system.sup.process("server")
    signal.pidfd_send_signal(server.pidfd, signal.SIGKILL)
    assert system.run(timeout=60) == 0
    assert system.results("evil") == [{"command": "call:svc,0x100,1", "error": "ENOT_EXISTENT", "status": 0,
                                       "label": 0}]
    assert "server was killed by signal 9 with status 137" in system.lines("moe")
    # the attacker's own table did not change because its partner died
    assert system.exited("server") == 137
    assert before  # dump was taken while both lived


def test_read_only_mapping_is_read_only_at_the_os_level(boot):
    system = boot(image("mmap_rw:shm", "map:shm,w", "write:shm"))
    system.run(timeout=60)
    results = system.results("evil")
    assert results[0]["writable_mmap"] is False and results[0]["errno"] == 13  # EACCES from mmap(2)
    assert results[1]["mapped"] is False and "-1" in results[1]["error"]  # Moe: -L4_EPERM for W without W
    assert results[2]["about_to_write"] is True
    assert len(results) == 3  # the store faulted: the task died before reporting
    assert system.exited("evil") == 128 + signal.SIGSEGV


def test_reply_without_a_caller_is_denied(boot):
    system = boot(image("reply"))
    assert system.run(timeout=60) == 0
    assert system.results("evil")[0]["error"] == "ENOT_EXISTENT"
    assert [v.rule for v in system.kernel.violations] == [Rule.REPLY_WITHOUT_CALLER]


def test_memory_quota_is_per_task(boot):
    system = boot(image("alloc:4096", "alloc:0x100000"))  # default quota 1 MiB: the second does not fit
    assert system.run(timeout=60) == 0
    first, second = system.results("evil")
    assert (first["error"], first["status"]) == ("OK", 0)
    assert (second["error"], second["status"]) == ("OK", -12)  # -L4_ENOMEM, for this task only
