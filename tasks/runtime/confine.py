"""OS-level confinement of one task process (docs/confinement.md).

apply(policy) runs in the fresh task process before any untrusted code is imported. Each step lands
in the ConfinementReport as enforced / skipped (policy did not ask) / unavailable (not root, kernel
lacks it) / failed; after all steps ran, ConfinementError is raised if a *required* one is not enforced.
"""
from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kernel_model.abi import CHANNEL_FD
from kernel_model.bootrecord import FAULT_MAGIC, BootRecordError, ConfinementPolicy

ENFORCED, SKIPPED, UNAVAILABLE, FAILED = "enforced", "skipped", "unavailable", "failed"
CLONE_THREAD, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x10000, 0x20000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
_NS_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 0x400, 0x800, 0x1000, 0x4000, 0x40000, 0x200000
_MNT_OPTS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
             "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
PR_SET_PDEATHSIG, PR_GET_DUMPABLE, PR_SET_DUMPABLE, PR_GET_SECCOMP, PR_CAPBSET_DROP = 1, 3, 4, 21, 24
PR_SET_MM, PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_SET_PTRACER = 35, 38, 39, 47, 0x59616D61
_DEV_NODES = ("null", "zero", "full", "random", "urandom")
TASK_UID_BASE = 61000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
_libc.prctl.argtypes = (ctypes.c_int,) + (ctypes.c_ulong,) * 4
_libc.unshare.argtypes = (ctypes.c_int,)


class ConfinementError(RuntimeError):
    """A required step was not enforced; .report says which. The process must exit."""

    def __init__(self, report: ConfinementReport):
        self.report = report
        bad = ", ".join(f"{s.name} ({s.status}: {s.detail})" for s in report.violations())
        super().__init__(f"required confinement not enforced: {bad}")


class _Unavailable(Exception):
    pass


def for_task(channel_fd: int, index: int, writable_dir: str | None = None, **kw: Any) -> ConfinementPolicy:
    """Recommended: uid = gid = 61000 + task index and strict when the kernel is root; keeps only
    the channel (fds 0-2 become /dev/null)."""
    root = os.geteuid() == 0
    kw.setdefault("strict", root)
    return ConfinementPolicy(allow_fds=(channel_fd,), uid=TASK_UID_BASE + index if root else None,
                             writable_dir=writable_dir, **kw)


def policy_from_record(record: dict, fds=()) -> ConfinementPolicy:
    """Policy from a JSON object of settings (``ConfinementPolicy.to_dict``); `fds` are fds the task
    already holds and must keep (boot memory). allow_fds defaults to the channel (3) and fd 2."""
    try:
        policy = ConfinementPolicy.from_dict(record)
    except BootRecordError as exc:
        raise ValueError(str(exc)) from None
    keep = policy.allow_fds if "allow_fds" in record else (CHANNEL_FD, 2)
    return replace(policy, allow_fds=tuple(keep) + tuple(fds))


@dataclass
class StepResult:
    name: str
    status: str
    detail: str = ""
    required: bool = False


@dataclass
class ConfinementReport:
    steps: list[StepResult] = field(default_factory=list)
    elapsed_s: float = 0.0

    def get(self, name: str) -> StepResult:
        return next(s for s in self.steps if s.name == name)

    def enforced(self, name: str) -> bool:
        return self.get(name).status == ENFORCED

    def violations(self) -> list[StepResult]:
        return [s for s in self.steps if s.required and s.status != ENFORCED]

    def to_dict(self) -> dict:
        return {"elapsed_s": self.elapsed_s, "steps": [asdict(s) for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict) -> ConfinementReport:
        return cls([StepResult(**s) for s in d["steps"]], d["elapsed_s"])

    def summary(self) -> str:
        return "\n".join(f"{s.name:<14} {s.status:<11}{' (required)' if s.required else '':<11} {s.detail}"
                         for s in self.steps)


def _check(rc: int, what: str) -> int:
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc


def _prctl(opt: int, a: int = 0) -> int:
    return _check(_libc.prctl(opt, a, 0, 0, 0), f"prctl({opt})")


def _mount(src, target, fstype, flags, data=None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def clean_env(keep: tuple[str, ...] = ()) -> int:
    """Empty os.environ (but `keep`) and zero the process's original environment block, so neither
    os.environ nor the initial stack (/proc/self/environ) hold secrets. Returns how many were removed."""
    kept = {k: os.environ[k] for k in keep if k in os.environ}
    removed = len(os.environ) - len(kept)
    os.environ.clear()
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[47]), int(fields[48])  # env_start, env_end (stat fields 50, 51)
    if 0 < start < end:
        ctypes.memset(start, 0, end - start)
    os.environ.update(kept)
    return removed


def _cover(parent: str, keep, flags: int) -> None:
    """Mount an empty tmpfs over `parent`, then bind back only the entries named in `keep`."""
    held = {c: os.open(os.path.join(parent, c), os.O_PATH) for c in keep}
    _mount("tmpfs", parent, "tmpfs", flags, "size=64k,mode=755")
    for c, fd in held.items():
        target = os.path.join(parent, c)
        os.mkdir(target) if os.path.isdir(f"/proc/self/fd/{fd}") else open(target, "w").close()
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        os.close(fd)


def _hold_passthrough(wd: str, names: tuple[str, ...]) -> list[tuple[str, int]]:
    """O_PATH handles on the host's directories ``wd/name`` before the image covers ``wd``."""
    held = []
    for name in names:
        if not name or "/" in name or name in (".", ".."):
            raise OSError(errno.EINVAL, f"workdir_passthrough: {name!r} is not a plain name")
        path = os.path.join(wd, name)
        if os.path.isdir(path) and not os.path.islink(path):
            held.append((name, os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)))
    return held


def _restore_passthrough(wd: str, held: list[tuple[str, int]]) -> None:
    """Bind the held host directories back at ``wd/name``, over the image's own."""
    for name, fd in held:
        target = os.path.join(wd, name)
        if os.path.lexists(target) and (os.path.islink(target) or not os.path.isdir(target)):
            os.unlink(target)  # the image is the task's: it may have put anything there
        os.makedirs(target, 0o700, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
        os.close(fd)


def _hide(path: str, wd: str | None) -> None:
    """Make `path` unreadable in this mount namespace: a file reads as empty (/dev/null bound over it), a
    directory becomes an empty tmpfs; if it holds the work dir, only the way down to that is rebuilt."""
    path = os.path.realpath(path)
    if not os.path.lexists(path):
        return  # already out of sight (under a covered directory)
    if not os.path.isdir(path):
        _mount("/dev/null", path, None, MS_BIND)
        return
    if wd and wd.startswith(path + "/"):
        held = os.open(wd, os.O_PATH)
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=711")
        os.makedirs(wd, 0o711, exist_ok=True)
        _mount(f"/proc/self/fd/{held}", wd, None, MS_BIND | MS_REC)
        os.close(held)
        return
    _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=000")


LOOP_CTL_GET_FREE, LOOP_CONFIGURE, LO_FLAGS_AUTOCLEAR = 0x4C82, 0x4C0A, 4


def _mount_image(ctl: int, image: int, wd: str, uid: int | None, gid: int | None) -> str:
    """Loop-mount the work dir's ext4 image over `wd` (in this mount namespace only; the loop device
    auto-clears when the namespace is gone). Its device node lives in the private /dev only while
    mounting. Everything in it is handed to the task's uid."""
    import fcntl
    import struct

    try:
        for _ in range(64):
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            node = f"/dev/l4emu-loop{n}"
            if not os.path.exists(node):
                os.mknod(node, 0o600 | 0o060000, os.makedev(7, n))  # S_IFBLK
            dev = os.open(node, os.O_RDWR | os.O_CLOEXEC)
            config = bytearray(304)  # struct loop_config: fd, block_size, loop_info64 (lo_flags at 52)
            struct.pack_into("<I", config, 0, image)
            struct.pack_into("<I", config, 8 + 52, LO_FLAGS_AUTOCLEAR)
            try:
                fcntl.ioctl(dev, LOOP_CONFIGURE, bytes(config))
            except OSError as e:
                os.close(dev)
                os.unlink(node)
                if e.errno == errno.EBUSY:  # another process took it between GET_FREE and CONFIGURE
                    continue
                raise
            try:
                _mount(node, wd, "ext4", MS_NOSUID | MS_NODEV | MS_NOEXEC, "errors=remount-ro")
            finally:
                os.close(dev)  # the mount holds the device; autoclear detaches it after the last close
                os.unlink(node)
            break
        else:
            raise OSError(errno.EBUSY, "no free loop device")
    finally:
        os.close(ctl)
        os.close(image)
    if uid is not None:
        gid = uid if gid is None else gid  # as filesystem() passes it: the task's gid defaults to its uid
        for root, dirs, files in os.walk(wd):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), uid, gid)
        os.chown(wd, uid, gid)
        os.chmod(wd, 0o700)
    st = os.statvfs(wd)
    return f" (budget: {st.f_blocks * st.f_frsize >> 20} MiB, {st.f_files} files)"


def _traversable(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    return bool(st.st_mode & (0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001))


class _Confiner:
    def __init__(self, policy: ConfinementPolicy):
        self.p, self.report, self.root, self.userns = policy, ConfinementReport(), os.geteuid() == 0, False
        self.pid = os.getpid()
        self.sc: Any = None  # the pyseccomp module (untyped), or why it could not be loaded
        self.ppid = policy.parent_pid if policy.parent_pid is not None else os.getppid()

    def step(self, name: str, wanted: bool, fn, why_skipped: str = "not requested by policy") -> None:
        try:
            status, detail = (ENFORCED, fn()) if wanted else (SKIPPED, why_skipped)
        except _Unavailable as e:
            status, detail = UNAVAILABLE, str(e)
        except Exception as e:
            status, detail = FAILED, f"{type(e).__name__}: {e}"
        req = wanted and (self.p.strict or name in self.p.required)
        self.report.steps.append(StepResult(name, status, str(detail or ""), req))

    def fds(self) -> str:
        keep, lo = sorted({fd for fd in self.p.allow_fds if fd >= 0}), 3
        for fd in keep + [2**31 - 1]:
            if fd > lo:
                os.closerange(lo, fd)
            lo = max(lo, fd + 1)
        if not self.p.keep_stdio:
            null = os.open("/dev/null", os.O_RDWR)
            for fd in {0, 1, 2} - set(keep) - {null}:
                os.dup2(null, fd)
            if null > 2:
                os.close(null)
        free = os.open("/", os.O_PATH)  # the number listdir's own fd will get
        os.close(free)
        left = sorted(int(n) for n in os.listdir("/proc/self/fd") if int(n) != free)
        if set(left) - set(keep) - {0, 1, 2}:
            raise OSError(errno.EBADF, f"fds still open: {left}")
        return f"open fds {left}" + ("" if self.p.keep_stdio else " (0-2 -> /dev/null unless allowed)")

    def namespace(self, flags: int, what: str) -> str:
        if not self.root and not self.userns:
            self.enter_userns()
        _check(_libc.unshare(flags), "unshare")
        if flags & CLONE_NEWNET:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # no route, even to loopback
                if s.connect_ex(("127.0.0.1", 9)) != errno.ENETUNREACH:
                    raise OSError(errno.EEXIST, "loopback is reachable in the new netns")
            what += f" {[n for _, n in socket.if_nameindex()]}, loopback down"
        return what

    def enter_userns(self) -> None:
        if not self.p.user_namespace:
            raise _Unavailable("not root and user namespaces disabled by policy")
        uid, gid = os.getuid(), os.getgid()
        try:
            _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
        except OSError as e:
            raise _Unavailable(f"not root and no user namespace ({e.strerror})") from e
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        self.userns = True
        self.report.steps.append(StepResult("userns", ENFORCED, f"unprivileged user namespace ({uid}->{uid})"))

    def need_mount_ns(self) -> None:
        if not (self.p.mount_namespace and self.report.get("mount_ns").status == ENFORCED):
            raise _Unavailable("needs the mount namespace")

    def filesystem(self) -> str:
        self.need_mount_ns()
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
        wd = os.path.realpath(self.p.writable_dir) if self.p.writable_dir else None
        if wd:
            os.makedirs(wd, 0o700, exist_ok=True)
        image = img = None
        if wd and self.p.workdir_image:
            # opened through a bind mount of its own: the loop device keeps it open for writing, and a
            # mount with writers cannot be made read-only (the bind is skipped below, then hidden)
            img = os.path.realpath(self.p.workdir_image)
            _mount(img, img, None, MS_BIND)
            image = os.open(img, os.O_RDWR | os.O_CLOEXEC)
        loops = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC) if image is not None else None
        if self.p.uid is not None and self.root:
            self.expose()
        # a /dev with only harmless nodes: a read-only mount does not stop writes to device nodes,
        # and uid 0 without capabilities still owns /dev/sda
        _cover("/dev", {n for n in _DEV_NODES if os.path.exists("/dev/" + n)}, MS_NOSUID | MS_NOEXEC)
        budget = ""
        if wd and image is not None:
            assert loops is not None and img is not None  # both opened above, with the image
            keep = _hold_passthrough(wd, self.p.workdir_passthrough)
            budget = _mount_image(loops, image, wd, self.p.uid, self.p.gid if self.p.gid is not None else self.p.uid)
            _restore_passthrough(wd, keep)
            if os.path.lexists(img):
                _mount("/dev/null", img, None, MS_BIND)
        elif wd:
            _mount(wd, wd, None, MS_BIND | MS_REC)
        for path in self.p.hidden_paths:
            _hide(path, wd)
        errors = []
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
        for m in mounts:
            target = m[4].encode().decode("unicode_escape")
            if (wd and (target == wd or target.startswith(wd + "/"))) or target == img:
                continue
            try:  # MS_BIND: per-mount flag only, never the (host's) superblock
                _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | sum(
                    _MNT_OPTS.get(o, 0) for o in m[5].split(",")))
            except OSError as e:  # overmounted mounts are unreachable by path anyway
                if e.errno not in (errno.ENOENT, errno.EINVAL) or target == "/":
                    errors.append(f"{target}: {e.strerror}")
        if errors:
            raise OSError(errno.EPERM, "could not make read-only: " + "; ".join(errors))
        return f"read-only except {wd}{budget}; /dev: {' '.join(sorted(os.listdir('/dev')))}"

    def expose(self) -> None:
        """Keep the interpreter reachable for the task uid: a non-traversable ancestor (e.g. /root
        0700 holding pyenv) is covered by a tmpfs into which only the needed children are bound."""
        uid, gid = self.p.uid, self.p.gid if self.p.gid is not None else self.p.uid
        assert uid is not None and gid is not None  # filesystem() calls this only for a task uid
        want = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable),
                os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),  # editable src
                *self.p.expose_paths, self.p.writable_dir or "", *(p for p in sys.path if os.path.exists(p))}
        for _ in range(16):
            blocked: dict[str, set[str]] = {}
            for path in {os.path.realpath(p) for p in want if p}:
                cur = "/"
                for part in path.strip("/").split("/"):
                    if not _traversable(cur, uid, gid):
                        blocked.setdefault(cur, set()).add(part)
                        break
                    cur = os.path.join(cur, part)
            if not blocked:
                return
            for parent, children in blocked.items():
                _cover(parent, children, MS_NOSUID | MS_NODEV)
        raise OSError(errno.ELOOP, "could not expose interpreter paths")

    def proc(self) -> str:
        """hidepid procfs when the task has its own uid; with a shared uid hidepid would still show
        (and open) dumpable same-uid processes such as the kernel, so /proc is emptied instead."""
        self.need_mount_ns()
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY
        if self.root and self.p.uid is not None:
            for opts in ("hidepid=invisible,subset=pid", "hidepid=2"):
                try:
                    _mount("proc", "/proc", "proc", flags, opts)
                    return f"fresh procfs ({opts}): other uids' processes invisible"
                except OSError:
                    continue
        _mount("tmpfs", "/proc", "tmpfs", flags, "size=4k,mode=555")
        return "no procfs (empty tmpfs over /proc)"

    def credentials(self) -> str:
        uid = self.p.uid
        gid = self.p.gid if self.p.gid is not None else uid
        assert uid is not None and gid is not None  # the step runs only when the policy sets a uid
        if not self.root:
            if os.getresuid() == (uid,) * 3:
                return f"already running as uid {uid}"
            raise _Unavailable("not root: cannot switch uid")
        if self.p.writable_dir:
            os.chown(self.p.writable_dir, uid, gid)
            os.chmod(self.p.writable_dir, 0o700)
        for cap in range(64):  # bounding set (needs CAP_SETPCAP, so before setuid)
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
                break
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid,) * 3 or os.getresgid() != (gid,) * 3 or os.getgroups():
            raise OSError(errno.EPERM, "credentials did not change")
        if not os.access(sys.base_prefix, os.R_OK | os.X_OK):
            raise OSError(errno.EACCES, f"uid {uid} cannot read the interpreter at {sys.base_prefix}")
        return f"uid={uid} gid={gid} groups=[]"

    def capabilities(self) -> str:
        class Hdr(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        data = (ctypes.c_uint32 * 6)()
        _libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
        _check(_libc.capset(ctypes.byref(Hdr(0x20080522, 0)), data), "capset")
        _check(_libc.capget(ctypes.byref(Hdr(0x20080522, 0)), data), "capget")
        if any(data):
            raise OSError(errno.EPERM, "capabilities remain")
        return "effective/permitted/inheritable/ambient empty"

    def pdeathsig(self) -> str:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != self.ppid:  # the parent died before the prctl took effect
            raise OSError(errno.ESRCH, f"parent {self.ppid} is gone (ppid now {os.getppid()})")
        return f"SIGKILL when parent {self.ppid} exits"

    def dumpable(self) -> str:
        _prctl(PR_SET_DUMPABLE, 0)
        if _prctl(PR_GET_DUMPABLE) != 0:
            raise OSError(errno.EPERM, "still dumpable")
        return "not dumpable: no ptrace / /proc/<pid>/mem by same-uid processes"

    def rlimit(self, res: int, value: int) -> str:
        hard = resource.getrlimit(res)[1]
        if not self.root and hard != resource.RLIM_INFINITY and hard < value:
            value = hard  # cannot raise it; lower is stricter anyway
        resource.setrlimit(res, (value, value))
        return f"soft=hard={value}"

    def no_new_privs(self) -> str:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if _prctl(PR_GET_NO_NEW_PRIVS) != 1:
            raise OSError(errno.EPERM, "no_new_privs not set")
        return "set"

    def seccomp(self) -> str:
        sc = self.sc
        if isinstance(sc, Exception):
            raise _Unavailable(f"pyseccomp/libseccomp not loadable: {sc}")
        allow_list = self.p.seccomp_allow_list
        if allow_list and self.p.fault_fd is not None:
            _install_sigsys_reporter(self.p.fault_fd)
        # an allow-list: anything else traps (SIGSYS: the reporter tells the kernel which call, then the task
        # exits with 128+SIGSYS); libseccomp kills calls through a foreign ABI (int 0x80, x32) either way
        flt = sc.SyscallFilter(sc.TRAP if allow_list else sc.ALLOW)
        flt.set_attr(sc.Attr.CTL_TSYNC, 1)  # cover any thread the bootstrap may have started
        rules = _seccomp_rules(sc, self.pid, self.p) if allow_list else _deny_rules(sc, self.pid, self.p)
        unknown = sorted({name for _, name, _ in rules if sc.resolve_syscall(sc.Arch.NATIVE, name) == -1})
        for action, name, args in rules:
            if name not in unknown:
                flt.add_rule(action, name, *args)
        flt.load()
        if _prctl(PR_GET_SECCOMP) != 2:
            raise OSError(errno.EPERM, "seccomp filter not active")
        allowed = len({n for a, n, c in rules if a == sc.ALLOW} - set(unknown))
        if allow_list:
            return f"allow-list of {allowed} syscalls, others trap (SIGSYS, reported); known escapes EPERM"
        n = len({r[1] for r in rules}) - len(unknown)
        return f"filter on {n} syscalls (EPERM)" + (f"; unknown here: {unknown}" if unknown else "")

    def pid_namespace(self) -> str:
        """unshare(CLONE_NEWPID) only moves children: fork, the child (pid 1 of the new namespace) goes
        on as the task, the parent stays behind as a shim that waits for it and exits with its status.
        The task's parent is outside its namespace, so getppid() is 0 and no other pid can be named."""
        if not self.root:
            raise _Unavailable("needs root (a pid namespace owned by the task's user namespace is not set up)")
        if os.getpid() == 1 and os.getppid() == 0:  # forked into a fresh one by the task template (zygote.py)
            self.pid, self.ppid = 1, 0
            return "own pid namespace: the task is pid 1, its parent (the kernel) is outside it"
        _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        r, w = os.pipe()
        child = os.fork()
        if child:
            os.close(w)
            _shim(child, r, self.p, self.ppid)  # never returns
        os.close(r)
        os.set_inheritable(w, False)
        self._pidns_ready = w
        self.pid, self.ppid = os.getpid(), 0
        if self.pid != 1:
            raise OSError(errno.EINVAL, f"not pid 1 in the new namespace (pid {self.pid})")
        os.write(w, b"1")  # the shim knows the child reached its namespace
        os.close(w)
        return "own pid namespace: the task is pid 1, its parent (a shim) is outside it"

    def run(self) -> ConfinementReport:
        p, t0 = self.p, time.perf_counter()
        if p.seccomp:  # load libseccomp first: find_library() runs ldconfig, i.e. fork+exec
            try:
                import pyseccomp
                self.sc = pyseccomp
            except Exception as e:
                self.sc = e
        self.step("env", p.clean_env, lambda: f"removed {clean_env(p.keep_env)} variables")
        self.step("fds", True, self.fds)
        # not root: the first namespace step creates a user namespace to hold them
        self.step("network", not p.network, lambda: self.namespace(CLONE_NEWNET, "own netns, interfaces"),
                  "policy allows the host network")
        self.step("ipc", p.ipc_namespace, lambda: self.namespace(CLONE_NEWIPC | CLONE_NEWUTS, "own ipc+uts ns"))
        self.step("pid_ns", p.pid_namespace, self.pid_namespace)
        self.step("mount_ns", p.mount_namespace, lambda: self.namespace(CLONE_NEWNS, "own mount ns"))
        self.step("filesystem", p.mount_namespace, self.filesystem)
        self.step("proc", p.hide_proc, self.proc)
        self.step("credentials", p.uid is not None, self.credentials, "policy uid=None: keeps the launcher's uid"
                  + (" 0 (no capabilities, but owner access to root's files)" if self.root else ""))
        self.step("capabilities", self.root or self.userns, self.capabilities, "not root: none held")
        # after the credential change: commit_creds() resets pdeathsig and dumpable
        self.step("pdeathsig", True, self.pdeathsig)
        self.step("dumpable", True, self.dumpable)
        per_uid = self.report.get("credentials").status == ENFORCED
        for name in ("as", "nofile", "nproc", "cpu", "core", "fsize"):
            val, res, why = getattr(p, "rlimit_" + name), getattr(resource, "RLIMIT_" + name.upper()), None
            if name == "nproc" and not per_uid:  # the limit counts every process of the uid
                val, why = None, "counts per uid: no per-task uid"
            self.step("rlimit_" + name, val is not None, lambda r=res, v=val: self.rlimit(r, v),
                      why or "unlimited by policy")
        self.step("no_new_privs", True, self.no_new_privs)
        self.step("seccomp", p.seccomp, self.seccomp)
        self.report.elapsed_s = time.perf_counter() - t0
        return self.report


def _deny_rules(sc, pid: int, p: ConfinementPolicy) -> list[tuple[object, str, tuple]]:
    """The old deny-list (seccomp_allow_list=False): (action, syscall, arg conditions), all else allowed."""
    from tasks.runtime.syscalls import DENIED
    deny = list(DENIED)
    if p.network:  # a network driver task: inet sockets and connect, but no unix/netlink/packet sockets
        deny = [name for name in deny if name not in ("socket", "connect")]
    deny += [] if p.allow_fork else ["fork", "vfork"]
    deny += [] if p.allow_exec else ["execve", "execveat"]
    A, E, U32 = sc.Arg, errno.EPERM, 0xFFFFFFFF
    rules: list[tuple[str, int, tuple[Any, ...]]] = [(name, E, ()) for name in deny]
    rules += [("clone3", errno.ENOSYS, ())]  # glibc falls back to clone
    if p.network:
        rules += [("socket", E, (A(0, sc.EQ, family),)) for family in (1, 16, 17)]  # AF_UNIX/NETLINK/PACKET
    rules += [("clone", E, (A(0, sc.MASKED_EQ, f, f),)) for f in _NS_FLAGS]
    rules += [] if p.allow_fork else [("clone", E, (A(0, sc.MASKED_EQ, CLONE_THREAD, 0),))]  # threads only
    # signals only to itself: kill(0 | -pgrp | -1 | other pid) fail
    rules += [(n, E, (A(0, sc.NE, pid),)) for n in ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")]
    rules += [(n, E, (A(0, sc.NE, 0),)) for n in ("prlimit64", "sched_setaffinity", "sched_setparam",
                                                   "sched_setscheduler", "sched_setattr")]
    rules += [(n, E, (A(1, sc.NE, 0),)) for n in ("setpriority", "ioprio_set")]
    rules += [("prctl", E, (A(0, sc.MASKED_EQ, U32, o),))
              for o in (PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_PTRACER, PR_SET_MM)]
    rules += [("fcntl", E, (A(1, sc.MASKED_EQ, U32, c),)) for c in (8, 10, 15)]  # F_SETOWN, F_SETSIG, F_SETOWN_EX
    rules += [("ioctl", E, (A(1, sc.MASKED_EQ, U32, c),))  # TIOCSTI TIOCLINUX FIOSETOWN SIOCSPGRP
              for c in (0x5412, 0x541C, 0x8901, 0x8902)]
    return [(sc.ERRNO(err), name, args) for name, err, args in rules]



PRCTL_ALLOWED = (2, 3, 7, 15, 16, 21, 23, 30, 34, 38, 39, 40, 42, 51, 52, 56, 0x53564D41, 0x41555856)
FCNTL_ALLOWED = (0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 16, 36, 37, 38, 1025, 1030, 1031, 1032, 1033, 1034)
IOCTL_ALLOWED = (0x5401, 0x5413, 0x541B, 0x5421, 0x5450, 0x5451)  # TCGETS TIOCGWINSZ FIONREAD FIONBIO FION/CLEX


def _seccomp_rules(sc, pid: int, p: ConfinementPolicy) -> list[tuple[object, str, tuple]]:
    """The allow-list (tasks/runtime/syscalls.py) as (action, syscall, arg conditions).

    Calls with arguments that decide (signals, clone, prctl, fcntl, ioctl, socket, prlimit) get
    complementary conditional rules: the harmless cases allowed, the known escapes EPERM, the rest
    trap like any syscall outside the list (libseccomp lets an unconditional rule override
    conditional ones, so none of these is ever allowed unconditionally).
    """
    from tasks.runtime.syscalls import ALLOWED, DENIED

    A, U32, ok, E = sc.Arg, 0xFFFFFFFF, sc.ALLOW, sc.ERRNO(errno.EPERM)
    conditional = {"kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "prlimit64",
                   "sched_setaffinity", "sched_setparam", "sched_setscheduler", "sched_setattr", "setpriority",
                   "ioprio_set", "prctl", "fcntl", "ioctl", "clone", "socket"}
    denied = set(DENIED) - ({"connect"} if p.network else set()) - conditional
    denied |= ({"fork", "vfork"} if not p.allow_fork else set()) | (
        {"execve", "execveat"} if not p.allow_exec else set())
    allowed = (set(ALLOWED) | ({"fork", "vfork"} if p.allow_fork else set())
               | ({"execve", "execveat"} if p.allow_exec else set())) - denied - conditional
    rules: list[tuple[object, str, tuple]] = [(ok, n, ()) for n in sorted(allowed)]
    rules += [(E, n, ()) for n in sorted(denied)] + [(sc.ERRNO(errno.ENOSYS), "clone3", ())]  # glibc uses clone
    for n in ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):  # signals only to itself
        rules += [(ok, n, (A(0, sc.EQ, pid),)), (E, n, (A(0, sc.NE, pid),))]
    for n in ("prlimit64", "sched_setaffinity", "sched_setparam", "sched_setscheduler", "sched_setattr"):
        rules += [(ok, n, (A(0, sc.EQ, 0),)), (E, n, (A(0, sc.NE, 0),))]
    for n in ("setpriority", "ioprio_set"):
        rules += [(ok, n, (A(1, sc.EQ, 0),)), (E, n, (A(1, sc.NE, 0),))]
    rules += [(E, "prctl", (A(0, sc.MASKED_EQ, U32, o),))
              for o in (PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_PTRACER, PR_SET_MM)]
    rules += [(ok, "prctl", (A(0, sc.MASKED_EQ, U32, o),)) for o in PRCTL_ALLOWED]
    rules += [(E, "fcntl", (A(1, sc.MASKED_EQ, U32, c),)) for c in (8, 10, 15)]  # F_SETOWN F_SETSIG F_SETOWN_EX
    rules += [(ok, "fcntl", (A(1, sc.MASKED_EQ, U32, c),)) for c in FCNTL_ALLOWED]
    rules += [(E, "ioctl", (A(1, sc.MASKED_EQ, U32, c),)) for c in (0x5412, 0x541C, 0x8901, 0x8902)]
    rules += [(ok, "ioctl", (A(1, sc.MASKED_EQ, U32, c),)) for c in IOCTL_ALLOWED]
    ns = sum(_NS_FLAGS)
    rules += [(E, "clone", (A(0, sc.MASKED_EQ, f, f),)) for f in _NS_FLAGS]
    if p.allow_fork:
        rules += [(ok, "clone", (A(0, sc.MASKED_EQ, ns, 0),))]
    else:  # threads only
        rules += [(ok, "clone", (A(0, sc.MASKED_EQ, ns | CLONE_THREAD, CLONE_THREAD),)),
                  (E, "clone", (A(0, sc.MASKED_EQ, CLONE_THREAD, 0),))]
    if p.network:  # a network driver task: inet sockets, no unix/netlink/packet sockets
        rules += [(ok, "socket", (A(0, sc.EQ, family),)) for family in (2, 10)]
        rules += [(E, "socket", (A(0, sc.EQ, family),)) for family in (1, 16, 17)]
    else:
        rules += [(E, "socket", ())]
    return rules


SIGSYS = 31
_REPORTER: list = []  # keeps the ctypes callback alive


def _install_sigsys_reporter(fault_fd: int) -> None:
    """SIGSYS (a trapped syscall) -> write the syscall number into the kernel's fault page and exit
    with 128+SIGSYS. The kernel reads the page when it reaps the task and names the call."""
    import struct

    class SigAction(ctypes.Structure):
        _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                    ("restorer", ctypes.c_void_p)]

    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

    def on_sigsys(_sig, info, _ctx):
        # siginfo_t: si_signo, si_errno, si_code, (pad), then for SIGSYS: void *call_addr, int syscall, u32 arch
        nr = ctypes.c_int.from_address(info + 24).value
        arch = ctypes.c_uint.from_address(info + 28).value
        try:
            os.pwrite(fault_fd, struct.pack("<III", FAULT_MAGIC, nr & 0xFFFFFFFF, arch), 0)
        finally:
            os._exit(128 + SIGSYS)

    callback = handler_type(on_sigsys)
    _REPORTER.append(callback)
    act = SigAction()
    act.handler = ctypes.cast(callback, ctypes.c_void_p).value
    act.flags = 0x4  # SA_SIGINFO
    _check(_libc.sigaction(SIGSYS, ctypes.byref(act), None), "sigaction(SIGSYS)")


def _shim(child: int, ready: int, p: ConfinementPolicy, ppid: int) -> None:
    """The parent left outside the task's pid namespace: no fds, the task's uid, dies with the kernel,
    exits with the task's status."""
    code = 1
    try:
        os.read(ready, 1)
        os.closerange(0, 2**31 - 1)
        if p.uid is not None:
            gid = p.gid if p.gid is not None else p.uid
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(p.uid, p.uid, p.uid)
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != ppid:
            os.kill(child, signal.SIGKILL)
        _prctl(PR_SET_DUMPABLE, 0)
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
    finally:
        os._exit(code)


def apply(policy: ConfinementPolicy) -> ConfinementReport:
    """Confine the calling process (start it single-threaded); see the module docstring."""
    report = _Confiner(policy).run()
    if report.violations():
        raise ConfinementError(report)
    return report
