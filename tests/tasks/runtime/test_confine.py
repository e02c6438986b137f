"""Host-confinement tests (issue 4, item 2; catalogue cases H1/H2).

Every scenario starts real processes: a *sibling* task (confined, holding listening unix sockets),
and the *probe* (tests/tasks/runtime/confined_probe.py), which confines itself with apply() and then
attacks the sibling, its parent (this pytest process) and the host. Each attack must really be
attempted and really fail; positive controls prove the targets were live.
"""
import array
import ctypes
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tasks.runtime.confine import ENFORCED, SKIPPED, UNAVAILABLE, ConfinementReport, for_task, policy_from_record

PROBE = Path(__file__).with_name("confined_probe.py")
ROOT = os.geteuid() == 0
SIBLING_UID, TASK_UID, USER_UID = 61001, 61002, 61900
needs_root = pytest.mark.skipif(not ROOT, reason="per-task uids need root (CI runs as root)")
pytestmark = pytest.mark.timeout(60)


class Proc:
    """One confined process and the kernel-side end of its SOCK_SEQPACKET channel."""

    def __init__(self, mode, policy, targets=None, as_uid=None, extra_fds=(), env=None):
        self.chan, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.chan.settimeout(20)
        cfg = {"mode": mode, "chan": child.fileno(), "targets": targets or {},
               # the pid namespace (a fork) is tested on booted tasks: here pids are what the attacks aim at
               "policy": {"allow_fds": [child.fileno()], "pid_namespace": False, **policy}}
        cmd = [sys.executable, str(PROBE), json.dumps(cfg)]
        if as_uid is not None and ROOT:
            cmd = ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups", *cmd]
        # not a with-block: the probe's stderr, read whenever it fails, lives as long as the probe
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, pass_fds=(child.fileno(), *extra_fds), env=env or {},
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     start_new_session=True)
        child.close()
        self.pid = None

    def recv(self):
        data = self.chan.recv(1 << 20)
        if not data:
            self.stderr.seek(0)
            raise EOFError(f"probe closed its channel; stderr: {self.stderr.read().decode()[-2000:]}")
        msg = json.loads(data)
        assert msg["phase"] != "error", msg["traceback"]
        self.pid = msg.get("pid", self.pid)
        return msg

    def send(self, obj, fds=()):
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.chan.sendmsg([json.dumps(obj).encode()], anc)

    def close(self):
        for pid in {self.proc.pid, self.pid} - {None}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.chan.close()


@pytest.fixture(scope="module")
def world():
    """Host-side targets: a base dir, a TCP listener on loopback, a read-only memfd, a secret dir."""
    base = Path(tempfile.mkdtemp(prefix="l4emu-confine-"))
    base.chmod(0o755)
    for d, mode in (("sock", 0o777), ("outside", 0o777), ("secret", 0o755)):
        (base / d).mkdir()
        (base / d).chmod(mode)
    (base / "secret" / "key").write_text("host secret")
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    libc = ctypes.CDLL(None, use_errno=True)
    sysv_key = secrets.randbelow(1 << 30) + 1
    queue = libc.msgget(sysv_key, 0o1000 | 0o666)  # IPC_CREAT: a host SysV queue anyone may open
    assert queue >= 0, os.strerror(ctypes.get_errno())
    payload = secrets.token_bytes(4096)
    mfd = os.memfd_create("l4emu-ds")
    os.write(mfd, payload)
    os.fchmod(mfd, 0o600)  # root-owned 0600: another uid cannot reopen it through /proc/self/fd
    ro = os.open(f"/proc/self/fd/{mfd}", os.O_RDONLY)
    state = {"base": base, "tcp": tcp, "payload": payload, "memfd": mfd, "memfd_ro": ro, "sysv_key": sysv_key,
             "escape_paths": []}
    yield state
    for p in state["escape_paths"]:  # whatever a (failing) run managed to write outside
        if os.path.exists(p):
            os.unlink(p)
    libc.msgctl(queue, 0, None)  # IPC_RMID
    tcp.close()
    os.close(ro)
    os.close(mfd)
    shutil.rmtree(base, ignore_errors=True)


def block_device():
    """The host's root disk, e.g. /dev/vda: readable by uid 0 even without capabilities."""
    disks = []
    for name in sorted(os.listdir("/dev")):
        st = os.stat(f"/dev/{name}", follow_symlinks=False)
        if stat.S_ISBLK(st.st_mode):
            disks.append((st.st_rdev != os.stat("/").st_dev, f"/dev/{name}"))
    return min(disks)[1] if disks else None  # containers may have none


def attack(world, name, policy, start_uid=None, sibling_policy=None, task_uid=None):
    """Run sibling + probe (started as start_uid: None = as this process); return the probe's
    messages, the sibling's view and the positive controls. task_uid owns the writable dir."""
    base, token = world["base"], secrets.token_hex(6)
    wdir = base / f"task-{name}"
    wdir.mkdir()
    if task_uid is not None and ROOT:
        os.chown(wdir, task_uid, task_uid)
    targets = {"abstract": f"l4emu-test-{token}", "unix_path": str(base / "sock" / f"{name}.sock"),
               "tcp_port": world["tcp"].getsockname()[1], "writable_dir": str(wdir), "sysv_key": world["sysv_key"],
               "hidden_file": str(base / "secret" / "key"), "block_device": block_device(),
               "outside_paths": [f"/tmp/l4emu-escape-{token}", str(base / "outside" / f"escape-{token}"),
                                 str(PROBE.parent / f"escape-{token}")]}
    world["escape_paths"] += targets["outside_paths"]
    sibling = Proc("sibling", sibling_policy or {}, targets, as_uid=start_uid)
    stray_r, stray_w = os.pipe()
    stray_file = os.open(base / "secret" / "key", os.O_RDONLY)
    secret = f"s3cr3t-{token}"
    probe_policy = {"writable_dir": str(wdir), "hidden_paths": [str(base / "secret")], **policy}
    try:
        sib = sibling.recv()
        targets["sibling_pid"] = sib["pid"]
        probe = Proc("attack", probe_policy, targets, as_uid=start_uid, extra_fds=(stray_r, stray_file),
                     env={"L4EMU_TEST_SECRET": secret, "PATH": "/usr/bin:/bin"})
        try:
            applied = probe.recv()
            probe.send({"size": len(world["payload"])}, [world["memfd_ro"]])
            results = probe.recv()["results"]
            try:
                exec_result = probe.recv()["result"]
            except EOFError:  # the probe was replaced by /bin/true
                exec_result = {"ok": True, "value": "exec succeeded"}
            probe_rc = probe.proc.wait(timeout=20)
        finally:
            probe.close()
        sibling.send("report?")
        sib_view = sibling.recv()
        sibling_alive = sibling.proc.poll() is None
        try:
            tcp_seen = world["tcp"].accept()[0].close() or True
        except BlockingIOError:
            tcp_seen = False
        controls = {}  # the same targets are reachable from an unconfined process
        for key, fam, addr in (("tcp", socket.AF_INET, ("127.0.0.1", targets["tcp_port"])),
                               ("abstract", socket.AF_UNIX, "\0" + targets["abstract"]),
                               ("path", socket.AF_UNIX, targets["unix_path"])):
            with socket.socket(fam) as s:
                controls[key] = s.connect_ex(addr) == 0
        world["tcp"].setblocking(True)
        world["tcp"].accept()[0].close()
        world["tcp"].setblocking(False)
        sibling.send("bye")
    finally:
        sibling.close()
        os.close(stray_r), os.close(stray_w), os.close(stray_file)
    escaped = [p for p in targets["outside_paths"] if os.path.exists(p)]
    for p in escaped:
        os.unlink(p)
    inside = wdir / "inside.txt"
    return {"applied": applied, "report": ConfinementReport.from_dict(applied["report"]), "r": results,
            "exec": exec_result, "rc": probe_rc, "sibling": sib_view, "sibling_alive": sibling_alive,
            "tcp_seen": tcp_seen, "controls": controls, "escaped": escaped, "secret": secret,
            "targets": targets, "sib_applied": sib, "inside": inside.exists() and inside.stat().st_uid}


@pytest.fixture(scope="module")
def root_run(world):
    if not ROOT:
        pytest.skip("needs root")
    return attack(world, "root", {"uid": TASK_UID, "strict": True}, None, {"uid": SIBLING_UID}, TASK_UID)


@pytest.fixture(scope="module")
def userns_run(world):
    """Not root: the probe and a same-uid sibling run as an ordinary user; apply() falls back to an
    unprivileged user namespace for the network/mount/ipc namespaces."""
    return attack(world, "userns", {}, USER_UID, {}, USER_UID)


@pytest.fixture(scope="module")
def plain_run(world):
    """Not root and no user namespace either: only the root-independent layers are left."""
    return attack(world, "plain", {"user_namespace": False}, USER_UID, {"user_namespace": False}, USER_UID)


def failed(result, *errnos):
    assert result["ok"] is False, f"attack succeeded: {result}"
    if errnos:
        assert result["errno"] in errnos, result
    return True


def assert_host_attacks_fail(run):
    r = run["r"]
    assert run["controls"] == {"tcp": True, "abstract": True, "path": True}
    failed(r["connect_abstract"], "EPERM")
    failed(r["connect_unix_path"], "EPERM")
    failed(r["connect_tcp_loopback"], "EPERM")
    assert run["tcp_seen"] is False
    assert run["sibling"]["pending"] == [False, False]  # no connection queued at the sibling
    failed(r["kill_sibling"], "EPERM")
    failed(r["kill_sibling_group"], "EPERM")
    assert run["sibling_alive"]
    for k in ("kill_parent", "kill_own_group", "kill_everyone", "ptrace_sibling", "ptrace_peek_parent"):
        failed(r[k], "EPERM")
    assert r["capabilities"]["value"] == [0] * 6
    assert r["kill_self"]["ok"]
    for who in ("sibling", "parent"):
        for k in ("read_{}_mem", "list_{}_fds", "read_{}_environ"):
            failed(r[k.format(who)], "ENOENT", "EACCES", "EPERM")
    assert run["targets"]["sibling_pid"] not in r["proc_pids"] and r["ppid"] not in r["proc_pids"]
    assert run["escaped"] == [] and all(failed(v, "EROFS") for v in r["write_outside"].values())
    assert r["write_inside"]["ok"] and run["inside"] is not False
    failed(r["read_hidden"])
    if run["targets"]["block_device"]:
        failed(r["read_block_device"], "ENOENT")
    assert set(r["dev_entries"]) <= {"null", "zero", "full", "random", "urandom"}


# --- as root: per-task uid, everything enforced ------------------------------------------------
@needs_root
def test_root_policy_enforces_every_step(root_run):
    rep = root_run["report"]
    assert root_run["applied"]["raised"] is None
    not_enforced = {s.name: s.status for s in rep.steps if s.status != ENFORCED}
    assert not_enforced == {"rlimit_cpu": SKIPPED, "pid_ns": SKIPPED}, rep.summary()  # pid_ns: booted tasks


@needs_root
def test_task_runs_as_its_own_uid_without_groups(root_run):
    r = root_run["r"]
    assert r["uid"] == [TASK_UID] * 3 and r["gid"] == [TASK_UID] * 3 and r["groups"] == []
    assert root_run["inside"] == TASK_UID  # its file landed in its directory, owned by its uid
    assert root_run["sib_applied"]["report"]["steps"]  # sibling confined too
    assert ConfinementReport.from_dict(root_run["sib_applied"]["report"]).enforced("credentials")


@needs_root
def test_root_host_attacks_all_fail(root_run):
    assert_host_attacks_fail(root_run)
    assert root_run["r"]["proc_pids"] == [root_run["applied"]["pid"]]  # /proc shows only itself


@needs_root
def test_only_channel_fd_inherited_and_env_scrubbed(root_run):
    fds = root_run["applied"]["fds"]
    assert {k: v for k, v in fds.items() if k not in "012"} == {fds_key(fds): "socket"}
    assert [fds[k] for k in "012"] == ["devnull"] * 3
    assert root_run["applied"]["env"] == {}
    block = root_run["applied"]["environ_block"]  # the initial environment strings in memory
    assert block is not None and len(block) > 0 and root_run["secret"].encode().hex() not in block


def fds_key(fds):
    sockets = [k for k, v in fds.items() if v == "socket"]
    assert len(sockets) == 1, fds
    return sockets[0]


@needs_root
def test_dataspace_memfd_is_read_only(root_run, world):
    r = root_run["r"]
    failed(r["mmap_memfd_writable"], "EACCES")
    failed(r["reopen_memfd_rw"], "EACCES")
    failed(r["write_memfd"], "EBADF")
    assert r["workload"]["value"]["memfd_sha256"] == hashlib.sha256(world["payload"]).hexdigest()


@needs_root
def test_normal_workload_still_works(root_run):
    w = root_run["r"]["workload"]
    assert w["ok"], w
    assert w["value"]["json"] and w["value"]["aesgcm"] and w["value"]["anon_mmap"] and w["value"]["dev_nodes"]
    assert w["value"]["thread_sha256"] == hashlib.sha256(b"x").hexdigest()
    assert root_run["rc"] == 0


@needs_root
def test_privilege_and_escape_syscalls_fail(root_run):
    r = root_run["r"]
    for k in ("unshare_userns", "make_dumpable", "io_uring_setup", "socketpair", "fork", "sysv_msgget"):
        failed(r[k], "EPERM")
    assert r["no_new_privs"] == 1
    failed(r["setuid_root"], "EPERM")
    failed(root_run["exec"], "EPERM")


@needs_root
def test_layers_hold_without_seccomp(world):
    """Switch seccomp off: namespaces, uid and read-only mounts must still stop the same attacks."""
    run = attack(world, "noseccomp", {"uid": TASK_UID, "seccomp": False}, None, {"uid": SIBLING_UID}, TASK_UID)
    r = run["r"]
    assert not run["report"].enforced("seccomp") and run["report"].enforced("network")
    failed(r["connect_tcp_loopback"], "ENETUNREACH")  # empty netns: loopback is down
    failed(r["connect_abstract"], "ECONNREFUSED")     # abstract names are per network namespace
    failed(r["kill_sibling"], "EPERM")                # other uid
    failed(r["read_sibling_mem"], "ENOENT")           # hidepid
    failed(r["sysv_msgget"], "ENOENT")                # own IPC namespace
    assert r["no_new_privs"] == 1
    assert all(failed(v, "EROFS") for v in r["write_outside"].values()) and run["escaped"] == []
    assert run["tcp_seen"] is False and run["sibling_alive"]
    # Documented limit: a 0777 path socket is reachable by any uid; only seccomp (no socket()) stops it.
    assert r["connect_unix_path"]["ok"] is True


@needs_root
def test_root_without_per_task_uid_still_confined(world):
    """uid=None as root (all tasks share uid 0): capabilities dropped and /proc emptied, so the
    same-uid, dumpable parent (this pytest process) stays out of reach."""
    run = attack(world, "rootshared", {}, None, {}, None)
    rep = run["report"]
    assert rep.get("credentials").status == SKIPPED and rep.enforced("capabilities")
    assert rep.get("proc").detail.startswith("no procfs")
    assert run["r"]["uid"] == [0, 0, 0]
    assert_host_attacks_fail(run)
    failed(run["r"]["read_parent_mem"], "ENOENT")


# --- not root: graceful degradation ------------------------------------------------------------
def test_userns_fallback_when_not_root(userns_run):
    rep = userns_run["report"]
    if "no user namespace" in rep.get("network").detail:
        pytest.skip(f"this host forbids unprivileged user namespaces: {rep.get('network').detail}")
    assert userns_run["applied"]["raised"] is None
    assert rep.get("credentials").status == SKIPPED
    for step in ("userns", "network", "ipc", "mount_ns", "filesystem", "proc", "capabilities", "seccomp"):
        assert rep.enforced(step), rep.summary()
    assert_host_attacks_fail(userns_run)
    assert userns_run["r"]["uid"] == [USER_UID if ROOT else os.getuid()] * 3
    assert userns_run["r"]["workload"]["ok"], userns_run["r"]["workload"]


def test_plain_user_degrades_and_says_so(plain_run):
    """No root, no userns: the report must say the namespaces are not enforced, and it must be true."""
    rep, r = plain_run["report"], plain_run["r"]
    assert plain_run["applied"]["raised"] is None
    for step in ("network", "ipc", "mount_ns"):
        assert rep.get(step).status == UNAVAILABLE and "not root" in rep.get(step).detail
    assert rep.get("filesystem").status == UNAVAILABLE and rep.get("proc").status == UNAVAILABLE
    for step in ("seccomp", "no_new_privs", "dumpable", "fds", "env"):
        assert rep.enforced(step)
    # what still holds: seccomp for sockets/signals, non-dumpable for the same-uid sibling's /proc
    for k in ("connect_abstract", "connect_unix_path", "connect_tcp_loopback", "kill_sibling", "ptrace_sibling"):
        failed(r[k], "EPERM")
    assert plain_run["tcp_seen"] is False and plain_run["sibling"]["pending"] == [False, False]
    failed(r["read_sibling_mem"], "EACCES", "EPERM")
    failed(r["list_sibling_fds"], "EACCES", "EPERM")
    # what does not: /proc lists the sibling, a world-writable directory is writable (honest report)
    assert plain_run["targets"]["sibling_pid"] in r["proc_pids"]
    assert r["write_outside"][plain_run["targets"]["outside_paths"][1]]["ok"] is True


def run_apply(policy, as_uid=None):
    p = Proc("apply", policy, as_uid=as_uid)
    try:
        msg = p.recv()
        p.proc.wait(timeout=20)
        return msg
    finally:
        p.close()


def test_required_step_that_cannot_be_enforced_fails_closed():
    msg = run_apply({"uid": 61950, "strict": True, "user_namespace": False}, as_uid=USER_UID)
    rep = ConfinementReport.from_dict(msg["report"])
    assert msg["raised"] and "credentials" in msg["raised"] and "network" in msg["raised"]
    assert {s.name for s in rep.violations()} >= {"credentials", "network", "ipc", "mount_ns"}
    assert rep.enforced("seccomp")  # remaining steps still applied before raising


def test_required_set_names_the_failing_step():
    msg = run_apply({"required": ["network"], "user_namespace": False}, as_uid=USER_UID)
    assert msg["raised"] and [s.name for s in ConfinementReport.from_dict(msg["report"]).violations()] == ["network"]
    msg = run_apply({"user_namespace": False}, as_uid=USER_UID)  # same, not required: no raise
    assert msg["raised"] is None


def test_parent_already_gone_fails_closed():
    msg = run_apply({"parent_pid": 1})
    assert msg["raised"] and "pdeathsig" in msg["raised"]


def test_write_through_read_only_mapping_faults(world):
    p = Proc("segv", {"uid": TASK_UID if ROOT else None}, as_uid=None)
    try:
        p.recv()
        p.send({"size": len(world["payload"])}, [world["memfd_ro"]])
        assert p.recv()["first_byte"] == world["payload"][:1].hex()
        assert p.proc.wait(timeout=20) == -signal.SIGSEGV
    finally:
        p.close()
    assert os.pread(world["memfd"], 1, 0) == world["payload"][:1]


def test_task_dies_with_its_parent():
    """PR_SET_PDEATHSIG: kill the launcher; the channel reports EOF because the task died too."""
    launcher = ("import subprocess,sys; p=subprocess.Popen(sys.argv[1:], pass_fds=[int(x) for x in "
                "__import__('os').environ['FDS'].split()]); sys.stdin.read()")
    chan, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    chan.settimeout(20)
    cfg = {"mode": "hold", "chan": child.fileno(), "targets": {}, "policy": {"allow_fds": [child.fileno()]}}
    mid = subprocess.Popen([sys.executable, "-c", launcher, sys.executable, str(PROBE), json.dumps(cfg)],
                           pass_fds=[child.fileno()], env={"FDS": str(child.fileno())}, stdin=subprocess.PIPE)
    child.close()
    task_pid = None
    try:
        msg = json.loads(chan.recv(1 << 20))
        task_pid = msg["pid"]
        assert msg["raised"] is None and msg["report"]["steps"]
        mid.kill()
        mid.wait()
        assert chan.recv(64) == b""  # EOF: every copy of the task's end is closed -> task is dead
    finally:
        mid.kill()
        mid.wait()
        if task_pid is not None:
            try:
                os.kill(task_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        chan.close()


def test_policy_travels_in_the_boot_record():
    pol = for_task(3, 7, "/run/task-7", hidden_paths=("/srv/keys",))
    assert pol.uid == (61007 if ROOT else None) and pol.strict == ROOT and pol.allow_fds == (3,)
    record = json.loads(json.dumps(pol.to_dict()))
    assert policy_from_record(record) == pol
    assert policy_from_record({"uid": 61001}, [9]).allow_fds == (3, 2, 9)  # channel, console, boot fd
    with pytest.raises(ValueError, match="netwrok"):
        policy_from_record({"netwrok": False})
