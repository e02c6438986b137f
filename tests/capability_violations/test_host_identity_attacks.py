"""Attacks on host identities and secrets on disk (issue 9, host half): a task of one system never
shares a uid with a task of another, and no task reads key material or another task's files by path."""
from __future__ import annotations

import hashlib
import os

import pytest

from kernel_model.host.uids import NoFreeUid, UidRegistry, first_free
from systemlib import ROOT

KEK = ROOT / "images" / "wvds" / "dev_kek.bin"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="per-task uids and mount namespaces need root (CI is root)")

PEEK = """
name: peek
run: {until: [evil]}
modules:
  crypto-kek: kek.bin
tasks:
  victim:
    program: testing.adversary
    args: ["await:go"]
    caps: {go: "go:rs"}
  evil:
    program: testing.adversary
    args: ["read_file:{kek}", "read_file:{module}", "read_file:{image}", "listdir:{run}",
           "read_file:{run}/victim/secret.txt", "write_file:mine.txt", "read_file:mine.txt", "ids"]
objects:
  go: {type: irq}
"""


@needs_root
def test_no_task_reads_the_kek_the_image_or_another_tasks_work_dir(boot, tmp_path):
    (tmp_path / "kek.bin").write_bytes(b"module key material")
    (tmp_path / "run" / "victim").mkdir(parents=True)
    (tmp_path / "run" / "victim" / "secret.txt").write_text("the victim's key store")
    run = tmp_path / "run"
    system = boot(PEEK.replace("{kek}", str(KEK)).replace("{module}", str(tmp_path / "kek.bin"))
                  .replace("{image}", str(tmp_path / "image.yaml")).replace("{run}", str(run)))
    system.run(timeout=60, until=lambda: len(system.results("evil")) == 8)
    kek, module, image, listing, victim, wrote, mine, ids = system.results("evil")
    secrets = {hashlib.sha256(KEK.read_bytes()).hexdigest(), hashlib.sha256(b"module key material").hexdigest(),
               hashlib.sha256((tmp_path / "image.yaml").read_bytes()).hexdigest()}
    for attempt in (kek, module, image):  # reads as empty, or not at all
        assert attempt.get("sha256") not in secrets and not attempt.get("bytes"), attempt
    assert listing["entries"] == ["evil"], listing  # its own work dir is all it sees of the run dir
    assert victim == {**victim, "read": False}, victim
    assert wrote["written"] and mine["read"] and mine["bytes"] == 1  # ... where it works as before
    assert ids["uid"] >= 61000
    assert (run / "evil").stat().st_mode & 0o777 == 0o700 and (run / "evil").stat().st_uid == ids["uid"]
    assert run.stat().st_mode & 0o777 == 0o700


TWO = """
name: twin
run: {until: [a]}
objects:
  go_a: {type: irq}
  go_b: {type: irq}
tasks:
  a:
    program: testing.adversary
    args: ["ids", "await:go"]
    caps: {go: "go_a:rs"}
  b:
    program: testing.adversary
    args: ["ids", "await:go"]
    caps: {go: "go_b:rs"}
"""


@needs_root
def test_two_systems_booted_at_once_get_disjoint_uids(boot, tmp_path):
    from kernel_model.host.confinement import policy_for
    from kernel_model.host.console import RecordingConsole
    from kernel_model.host.images import load_image
    from kernel_model.host.supervisor import Supervisor
    from systemlib import System

    first = boot(TWO)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "image.yaml").write_text(TWO)
    console = RecordingConsole()  # a second system with its own run dir, booted while the first runs
    with Supervisor(load_image(tmp_path / "other" / "image.yaml"), console, confinement=policy_for,
                    run_dir=tmp_path / "other" / "run") as sup:
        sup.start()
        second = System(sup, console)
        for system in (first, second):
            system.run(timeout=60, until=lambda s=system: len(s.results("a")) + len(s.results("b")) == 2)
        uids = [{p.task.name: _uid(p.pid) for p in system.sup.procs.values()} for system in (first, second)]
        reported = [{r["uid"] for t in "ab" for r in system.results(t)} for system in (first, second)]
    assert len(uids[0]) == len(uids[1]) == 4, uids  # sigma0, moe, a, b: all alive, each its own uid
    assert len(set(uids[0].values()) | set(uids[1].values())) == 8, uids
    assert reported[0] <= set(uids[0].values()) and reported[1] <= set(uids[1].values())  # as the tasks see it


def _uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


def test_the_registry_skips_leased_and_busy_uids(tmp_path):
    a = UidRegistry(tmp_path, first=70000, count=4, in_use=lambda: {70001})
    b = UidRegistry(tmp_path, first=70000, count=4, in_use=set)
    one = a.acquire()
    two = b.acquire()  # another registry object = another system: 70000 is leased
    three = a.acquire()
    assert (one.uid, two.uid, three.uid) == (70000, 70001, 70002)  # a skips 70001: a process runs under it
    one.release()
    assert b.acquire().uid == 70000  # released once its process is reaped
    assert a.acquire().uid == 70003
    with pytest.raises(NoFreeUid):
        a.acquire()


def test_first_free_is_the_first_candidate_neither_busy_nor_leased():
    assert first_free([1, 2, 3], lambda uid: uid != 2, {1}) == 3
    assert first_free([1, 2], lambda uid: False, set()) is None


SYSCALLS = """
name: syscalls
run: {until: [evil]}
tasks:
  evil:
    program: testing.adversary
    args: ["ids", "signal:1", "signal:2", "signal:{kernel}", "syscall:{getppid}", "syscall:{memfd_secret},0"]
"""


@needs_root
def test_a_task_sees_only_its_own_pid_and_is_stopped_at_a_syscall_outside_its_allow_list(boot):
    import pyseccomp
    getppid, secret = (pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, n) for n in ("getppid", "memfd_secret"))
    system = boot(SYSCALLS.replace("{kernel}", str(os.getpid())).replace("{getppid}", str(getppid))
                  .replace("{memfd_secret}", str(secret)))
    assert system.run(timeout=60) == 1, system.console.text()  # its run.until task failed
    ids, me, other, kernel, _, ppid, about = system.results("evil")
    assert ids["pid"] == 1 and ids["ppid"] == 0  # pid 1 of its own namespace; its parent is outside it
    assert me["exists"] and not other["exists"] and not kernel["exists"]  # the kernel's pid names nothing
    assert ppid["rc"] == 0  # getppid, even as a raw syscall: 0
    assert about["about_to_call"] == secret and len(system.results("evil")) == 7  # it never returned
    assert system.exited("evil") == 128 + 31  # SIGSYS
    assert f"evil faulted: syscall {secret} (memfd_secret) not allowed by its seccomp filter" in system.console.text()


def test_the_registry_scans_processes_once_per_burst_of_starts(tmp_path):
    scans, now = [], [100.0]

    def in_use() -> set[int]:
        scans.append(now[0])
        return {70000} if len(scans) == 1 else {70003}

    reg = UidRegistry(tmp_path, first=70000, count=8, in_use=in_use, clock=lambda: now[0])
    assert [reg.acquire().uid for _ in range(3)] == [70001, 70002, 70003]  # one scan: 70000 busy
    assert scans == [100.0]
    now[0] += 1.0  # a second later the next start looks again
    assert reg.acquire().uid == 70000 and scans == [100.0, 101.0]  # 70000 free now, 70003 leased anyway
