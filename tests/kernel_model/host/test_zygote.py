"""Task processes forked from the template (``kernel_model/host/zygote.py``, ``tasks/runtime/zygote.py``)
start exactly like ones started with ``posix_spawn``: fd 3 = the channel, /dev/null on 0-2, nothing
else, LANG only, a session of their own, the kernel host as their parent (it reaps them and gets
their exit status); and if the template dies, tasks start with ``posix_spawn`` again."""
from __future__ import annotations

import ctypes
import os
import signal

import pytest

from kernel_model.host import zygote as zygote_module
from kernel_model.host.zygote import TASK_ENV, Zygote
from kernel_model.objects import Irq, ThreadState

PROBE = """
name: zygote-probe
run: {until: [probe]}
objects:
  go: {type: irq}
tasks:
  probe:
    program: testing.adversary
    args: ["ids", "fds", "await:go", "exit:7"]
    caps: {go: "go:rs"}
"""


def _outside(pid: int) -> dict:
    """What the host sees of a task process."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    fds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        fds[int(fd)] = target.split(":")[0] if target.startswith(("socket:", "/memfd:")) else target
    return {"sid": os.getsid(pid), "pgid": os.getpgid(pid), "ppid": int(status["PPid"]), "fds": fds,
            "threads": int(status["Threads"])}


def _subreaper() -> bool:
    was = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(zygote_module.PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    return bool(was.value)


def _awaits_go(system) -> bool:
    """The probe's thread waits for its IRQ (so the IRQ the test triggers reaches it)."""
    return any(t.name == "probe" and t.alive and t.threads and t.threads[0].state is ThreadState.RECEIVING
               and isinstance(t.threads[0].recv_from, Irq) for t in system.kernel.tasks.values())


def _probe(boot, confine: bool) -> tuple[dict, dict, dict, int | None, object]:
    system = boot(PROBE, confine=confine)
    system.run(timeout=60, until=lambda: _awaits_go(system))
    ids, fds = system.results("probe")
    proc = system.sup.process("probe")
    pid = proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    if children:  # the process the host started is a pid-namespace shim; the task is its child
        pid = children[0]
    seen = _outside(pid)
    seen["pid"] = proc.pid
    seen["shim"] = _outside(proc.pid) if children else None
    system.sup.inject_irq("go")
    code = system.run(timeout=60)
    assert code == 1, system.console.text()  # its run.until task failed ...
    return ids, fds, seen, system.exited("probe"), system  # ... with the status it chose


@pytest.mark.parametrize("confine", [False, True])
def test_a_forked_task_starts_exactly_like_a_spawned_one(boot, monkeypatch, confine):
    if confine and os.geteuid() != 0:
        pytest.skip("confined tasks need root")
    forked = _probe(boot, confine)
    monkeypatch.setenv("L4EMU_ZYGOTE", "0")
    spawned = _probe(boot, confine)
    assert forked[4].sup.zygote is not None and forked[4].sup.zygote.forked > 0  # the template made it
    assert spawned[4].sup.zygote is None
    for _ids, fds, seen, code, _system in (forked, spawned):
        assert code == 7
        assert seen["sid"] == seen["pgid"] == seen["pid"]  # a session of its own
        host_child = seen["shim"] or seen  # the process the kernel host started and reaped (the status above)
        assert host_child["ppid"] == os.getpid() and host_child["sid"] == seen["pid"]
        assert seen["fds"][3] == "socket" and all(seen["fds"][fd] == "/dev/null" for fd in (0, 1, 2))
        assert set(fds["env"]) <= set(TASK_ENV)
        assert fds["targets"]["3"].startswith("socket:")
        assert all(fds["targets"][str(fd)] == "/dev/null" for fd in (0, 1, 2))
    # the same fds (kinds) and the same environment either way
    assert forked[2]["fds"] == spawned[2]["fds"] and forked[1]["env"] == spawned[1]["env"]
    assert sorted(forked[1]["fds"]) == sorted(spawned[1]["fds"])
    if confine:
        assert forked[0]["pid"] == spawned[0]["pid"] == 1 and forked[0]["ppid"] == 0  # its own pid namespace
        # made by the template before the task existed: the kernel's own child, no shim behind it
        assert forked[2]["shim"] is None and spawned[2]["shim"] is not None
        assert forked[0]["uid"] >= 61000 and forked[1]["env"] == {}
    else:
        assert forked[0]["ppid"] == os.getpid()


def test_the_template_is_started_like_a_task_and_holds_nothing_but_code():
    template = Zygote(["tasks.runtime.env"])
    try:
        template.wait_ready()  # its imports done (one of them runs ldconfig)
        with open(f"/proc/{template.pid}/environ", "rb") as f:
            environ = dict(item.decode().split("=", 1) for item in f.read().split(b"\0") if item)
        assert environ == TASK_ENV
        seen = _outside(template.pid)
        assert seen["sid"] == template.pid and seen["ppid"] == os.getpid()
        assert {fd: t for fd, t in seen["fds"].items() if fd <= 2} == {0: "/dev/null", 1: "/dev/null", 2: "/dev/null"}
        assert sorted(t for fd, t in seen["fds"].items() if fd > 2) == ["socket"]  # its control socket only
        assert seen["threads"] == 1
        with open(f"/proc/{template.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[1:-1] == [b"-I", b"-m", b"tasks.runtime.zygote"]
    finally:
        template.close()


def test_if_the_template_dies_tasks_start_with_posix_spawn(boot, monkeypatch):
    dead = Zygote()
    os.kill(dead.pid, signal.SIGKILL)
    os.waitid(os.P_PIDFD, dead.pidfd, os.WEXITED | os.WNOWAIT)  # it is dead (not reaped: close() does that)
    monkeypatch.setattr("kernel_model.host.supervisor.shared_zygote", lambda preload: dead)
    try:
        system = boot(PROBE, confine=False)
        system.run(timeout=60, until=lambda: _awaits_go(system))
        system.sup.inject_irq("go")
        assert system.run(timeout=60) == 1, system.console.text()
        assert system.exited("probe") == 7
        text = system.console.text()
        assert "task template: the template process" in text and "tasks start with posix_spawn" in text
        assert system.sup.zygote is None and not dead.alive()
    finally:
        dead.close()


def test_a_refused_fork_says_why_and_leaves_the_template_alive():
    template = Zygote()
    try:
        import socket
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with a, b:
            template.sock.send(b"X")  # not a request it knows
            assert template.sock.recv(100) == b"Ebad request"
            pid = template.fork(b)  # and it still forks
            assert not _subreaper()  # the host is a child subreaper only while it asks
            a.close()  # the task sees its channel closed before any boot record: it exits
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) != 0
        assert template.alive()
    finally:
        template.close()


def test_the_shared_template_is_restarted_once_it_died(monkeypatch):
    monkeypatch.setattr(zygote_module, "_shared", None)
    first = zygote_module.shared([])
    try:
        assert zygote_module.shared([]) is first
        first.close()
        second = zygote_module.shared([])
        assert second is not first and second.alive()
        second.close()
    finally:
        first.close()


def test_a_template_that_died_is_noticed_before_anyone_asks_it(monkeypatch):
    monkeypatch.setattr(zygote_module, "_shared", None)
    first = zygote_module.shared([])
    try:
        os.kill(first.pid, signal.SIGKILL)
        os.waitid(os.P_PIDFD, first.pidfd, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
        assert not first.alive()
        second = zygote_module.shared([])
        assert second is not first and second.alive()
        second.close()
    finally:
        first.close()


def test_the_template_imports_no_task_program():
    """Module-level code of a program would run unconfined in the process every task is forked from."""
    from kernel_model.host.images import PROJECT_ROOT, load_image
    from kernel_model.host.zygote import programs
    from tasks.runtime.zygote import trusted

    wanted = programs(load_image(PROJECT_ROOT / "images" / "hello.yaml").image)
    assert "roottasks.moe" in wanted and "cryptography.x509" in wanted
    assert not [m for m in wanted if m.startswith("tasks.")]
    assert not trusted("tasks.oem_gateway.task") and not trusted("tasks.testing.adversary")
    assert trusted("tasks.runtime.env") and trusted("protocols.crypto")
