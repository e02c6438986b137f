"""Issue 16, item 1: no caller ever hangs on a dead or never-started service.

Each way a server can fail to start or end for good, with a client that calls WITHOUT a timeout
(``testing.patient_client``): it must get L4_IPC_ENOT_EXISTENT, the first call (waiting for a
binding) and a later one alike. ``system.run(timeout=...)`` is a hang guard only: the test fails if
the client is still waiting when it runs out; nothing waits for a time to pass.
"""
from __future__ import annotations

import hashlib
import json
import signal

from kernel_model.objects import ThreadState

FAST = "{policy: on-failure, backoff: {initial: 10ms, max: 40ms}, intensity: {restarts: 2, period: 60s}}"


def image(server_program: str, server_args: str, restart: str) -> str:
    return f"""
        name: gone
        run: {{until: [client]}}
        objects:
          svc: {{type: gate}}
        tasks:
          server:
            program: {server_program}
            args: {server_args}
            restart: {restart}
            caps: {{svc: svc:svr}}
          client:
            program: testing.patient_client
            args: [svc, svc]
            caps: {{svc: svc:rw}}
    """


def enot_existent_twice(system) -> None:
    assert system.run(timeout=90) == 0, system.console.text()
    assert [r["error"] for r in system.results("client")] == ["ENOT_EXISTENT", "ENOT_EXISTENT"], system.console.text()
    assert "server is gone for good: callers of svc get L4_IPC_ENOT_EXISTENT" in system.lines("moe")
    assert [v for v in system.kernel.violations if v.task == "client"] == []  # calling a dead service is no offence


def test_a_crash_loop_that_exhausts_the_restart_budget(boot):
    system = boot(image("testing.adversary", '["exit:3"]', FAST))
    enot_existent_twice(system)
    moe = system.lines("moe")
    # exponential backoff: 10 ms, then 20 ms (Moe's receive timeout ends its wait when a restart is due)
    assert "server exited (3); restart 1 in 0.01 s (1 within 60 s)" in moe, moe
    assert "server exited (3); restart 2 in 0.02 s (2 within 60 s)" in moe, moe
    assert any(line.startswith("server exited with status 3; giving up: 2 restarts within 60 s") for line in moe), moe
    assert [code for name, code in system.sup.exited if name == "server"] == [3, 3, 3]


def test_a_task_that_exits_0_without_ever_binding(boot):
    system = boot(image("testing.adversary", '["exit:0"]', "on-failure"))
    enot_existent_twice(system)
    assert "server exited with status 0" in system.lines("moe")


def test_a_damaged_store_stops_the_server_before_it_binds(boot, tmp_path):
    # the store is placed in the server's work dir before boot (unconfined: the dir is a plain directory)
    workdir = tmp_path / "run" / "server"
    workdir.mkdir(parents=True)
    (workdir / "store.json").write_text(json.dumps({"value": 7, "sha256": hashlib.sha256(b"8").hexdigest()}))
    system = boot(image("testing.store_server", "[]", "never"), confine=False)
    enot_existent_twice(system)
    assert any("store store.json is damaged" in line for line in system.lines("server"))


def test_the_same_server_with_a_good_store_serves(boot, tmp_path):
    """The control: the damaged-store test fails for the store, not for the set-up."""
    workdir = tmp_path / "run" / "server"
    workdir.mkdir(parents=True)
    (workdir / "store.json").write_text(json.dumps({"value": 7, "sha256": hashlib.sha256(b"7").hexdigest()}))
    system = boot(image("testing.store_server", "[]", "never"), confine=False)
    assert system.run(timeout=90) == 0, system.console.text()
    assert [r["status"] for r in system.results("client")] == [0, 0]


def test_a_server_killed_for_good_before_it_bound(boot):
    # the server sleeps in the kernel and never binds; the client's call waits for the binding
    system = boot(image("testing.adversary", '["sleep:600000"]', "never"))
    gate = None

    def client_waits_on_the_gate() -> bool:
        nonlocal gate
        try:
            client = system.kernel.task_by_name("client")
        except KeyError:
            return False
        if not client.threads:  # created, its thread not yet
            return False
        thread = client.threads[0]
        if thread.state is ThreadState.SENDING and thread.send_target is not None:
            gate = thread.send_target
            return True
        return False

    system.run(timeout=90, until=client_waits_on_the_gate)
    assert gate is not None and gate.thread is None, "the client never queued on the unbound gate"
    proc = system.sup.process("server")
    signal.pidfd_send_signal(proc.pidfd, signal.SIGKILL)
    enot_existent_twice(system)
    assert "server was killed by signal 9 with status 137" in system.lines("moe")


def test_a_server_that_bound_and_died_for_good_answers_at_once_too(boot):
    system = boot(image("testing.store_server", "[]", "never").replace("args: [svc, svc]", "args: [svc]"))

    def served() -> bool:
        return len(system.results("client")) == 1

    system.run(timeout=90, until=served)
    assert [r["status"] for r in system.results("client")] == [0]
    assert system.run(timeout=90) == 0
