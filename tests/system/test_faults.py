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


def test_a_task_inherits_only_its_channel_and_no_secrets(boot, monkeypatch):
    monkeypatch.setenv("L4EMU_TEST_SECRET", "hunter2")  # the kernel's environment must not leak
    system = boot(image("fds"))
    assert system.run(timeout=60) == 0
    (report,) = system.results("evil")
    # 3 = the kernel channel; 0/1/2 = /dev/null; anything else is the listing's own directory fd.
    assert report["targets"]["3"].startswith("socket:")
    assert report["targets"]["0"] == report["targets"]["1"] == report["targets"]["2"] == "/dev/null"
    others = [fd for fd in report["fds"] if fd > 3 and "/proc" not in report["targets"].get(str(fd), "/proc")
              and not report["targets"][str(fd)].startswith("/memfd:fault:")]  # its fault page (a trapped syscall)
    assert others == []
    assert "hunter2" not in str(report["env"]) and "hunter2" not in str(report["argv"])
    assert report["argv"][1:] in (["-I", "-m", "tasks.runtime.bootstrap"],  # no secrets, no names
                                  ["-I", "-m", "tasks.runtime.zygote"])  # (forked from the task template)


def test_restart_policy_on_failure_then_gives_up(boot):
    system = boot("""
        name: restarts
        run: {until: [flaky]}
        tasks:
          flaky:
            program: testing.adversary
            args: ["exit:3"]
            restart: on-failure
            restart_limit: 2
    """)
    assert system.run(timeout=60) == 1
    moe = system.lines("moe")
    assert "flaky exited (3); restart 1 of 2" in moe and "flaky exited (3); restart 2 of 2" in moe
    assert "flaky exited with status 3" in moe
    assert [code for name, code in system.sup.exited if name == "flaky"] == [3, 3, 3]


def test_a_crashing_task_reports_through_its_log_and_nothing_else_stops(boot):
    system = boot("""
        name: crash
        run: {until: [c]}
        tasks:
          c:
            program: hello.ping_client
            args: [abc]
    """)
    assert system.run(timeout=60) == 1
    assert "! ValueError: invalid literal for int() with base 10: 'abc'" in system.lines("c")
    assert "c exited with status 1" in system.lines("moe")
