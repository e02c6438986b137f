"""Adversarial task for test_confine.py: confines itself with tasks.runtime.confine.apply(), then
attacks its host the way a hostile task would and reports every outcome as JSON over its channel
(the only way out; stdout/stderr are /dev/null after apply()).

    python confined_probe.py '<json config>'   config: {"mode", "chan", "policy", "targets"}

modes: attack (full battery), sibling (holds listening sockets for others to attack),
       segv (writes through a read-only mapping of a received memfd), hold (blocks on the channel),
       apply (only reports what apply() did / raised).
"""
import array
import ctypes
import errno
import json
import mmap
import os
import signal
import socket
import stat
import sys
import traceback

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
from tasks.runtime.confine import ConfinementError, apply, policy_from_record

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)


def c(rc):
    """libc call result -> value, or OSError with errno (like os.* functions)."""
    if rc == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rc


def peek(pid):
    ctypes.set_errno(0)
    word = libc.ptrace(2, pid, 0, 0)  # PTRACE_PEEKDATA
    if ctypes.get_errno():
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return word


def capabilities():
    class Hdr(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    data = (ctypes.c_uint32 * 6)()
    c(libc.capget(ctypes.byref(Hdr(0x20080522, 0)), data))
    return list(data)  # effective, permitted, inheritable (low, high words)


def send(chan, obj, fds=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    chan.sendmsg([json.dumps(obj).encode()], anc)


def recv_fd(chan):
    fds = array.array("i")
    msg, anc, _, _ = chan.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return json.loads(msg), fds[0]


def attempt(fn):
    """Run one attack: {"ok": True, "value": ...} if it worked, else the errno it failed with."""
    try:
        return {"ok": True, "value": fn()}
    except OSError as e:
        return {"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno)), "error": str(e)}
    except Exception as e:
        return {"ok": False, "errno": None, "error": f"{type(e).__name__}: {e}"}


def connect(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(addr)
        return "connected"
    finally:
        s.close()


def write_file(path):
    with open(path, "w") as f:
        f.write("escaped")
    return path


def read_file(path, n=64):
    with open(path, "rb") as f:
        return f.read(n).hex()


def open_fds():
    null = os.stat("/dev/null").st_rdev
    out = {}
    for fd in range(1024):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        kind = "devnull" if stat.S_ISCHR(st.st_mode) and st.st_rdev == null else \
            "socket" if stat.S_ISSOCK(st.st_mode) else stat.filemode(st.st_mode)
        out[str(fd)] = kind
    return out


def environ_block():
    """The process's original environment strings, read straight from its memory (the task itself
    cannot open /proc/self/environ once non-dumpable; /proc/self/stat gives the address range)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    start, end = int(fields[47]), int(fields[48])
    return ctypes.string_at(start, end - start).hex()


def proc_pids():
    try:
        return sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
    except OSError:
        return []


def workload(memfd, size):
    import hashlib
    import threading

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    aes = AESGCM(key)
    ok_aes = aes.decrypt(nonce, aes.encrypt(nonce, b"payload", b"ad"), b"ad") == b"payload"
    anon = mmap.mmap(-1, 1 << 20)
    anon[:5] = b"hello"
    box = []
    t = threading.Thread(target=lambda: box.append(hashlib.sha256(b"x").hexdigest()))
    t.start()
    t.join()
    ro = mmap.mmap(memfd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    with open("/dev/urandom", "rb") as rnd, open("/dev/null", "wb") as null:
        dev_ok = len(rnd.read(16)) == 16 and null.write(b"x") == 1
    return {"json": json.loads(json.dumps({"a": 1})) == {"a": 1}, "aesgcm": ok_aes,
            "anon_mmap": anon[:5] == b"hello", "dev_nodes": dev_ok, "thread_sha256": box[0],
            "memfd_sha256": hashlib.sha256(ro[:]).hexdigest()}


def attacks(cfg, memfd, size):
    t = cfg["targets"]
    sib, ppid = t["sibling_pid"], os.getppid()
    r = {"uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(), "ppid": ppid}
    r["connect_abstract"] = attempt(lambda: connect(socket.AF_UNIX, "\0" + t["abstract"]))
    r["connect_unix_path"] = attempt(lambda: connect(socket.AF_UNIX, t["unix_path"]))
    r["connect_tcp_loopback"] = attempt(lambda: connect(socket.AF_INET, ("127.0.0.1", t["tcp_port"])))
    r["socketpair"] = attempt(lambda: [s.close() for s in socket.socketpair()] and "created")
    r["kill_sibling"] = attempt(lambda: os.kill(sib, signal.SIGKILL))
    r["kill_sibling_group"] = attempt(lambda: os.killpg(sib, 0))
    r["kill_parent"] = attempt(lambda: os.kill(ppid, 0))
    r["kill_own_group"] = attempt(lambda: os.kill(0, 0))
    r["kill_everyone"] = attempt(lambda: os.kill(-1, 0))
    r["kill_self"] = attempt(lambda: os.kill(os.getpid(), 0))
    r["ptrace_sibling"] = attempt(lambda: c(libc.ptrace(16, sib, 0, 0)) or "attached")
    r["ptrace_peek_parent"] = attempt(lambda: peek(ppid))  # the kernel alone would say ESRCH
    r["capabilities"] = attempt(capabilities)
    r["no_new_privs"] = libc.prctl(39, 0, 0, 0, 0)
    r["sysv_msgget"] = attempt(lambda: c(libc.msgget(t["sysv_key"], 0o666)) and "opened the host's queue")
    for who, pid in (("sibling", sib), ("parent", ppid)):
        r[f"read_{who}_mem"] = attempt(lambda pid=pid: read_file(f"/proc/{pid}/mem"))
        r[f"list_{who}_fds"] = attempt(lambda pid=pid: os.listdir(f"/proc/{pid}/fd"))
        r[f"read_{who}_environ"] = attempt(lambda pid=pid: read_file(f"/proc/{pid}/environ"))
    r["proc_pids"] = proc_pids()
    r["write_outside"] = {p: attempt(lambda p=p: write_file(p)) for p in t["outside_paths"]}
    r["write_inside"] = attempt(lambda: write_file(os.path.join(t["writable_dir"], "inside.txt")))
    r["read_hidden"] = attempt(lambda: read_file(t["hidden_file"]))
    r["read_block_device"] = attempt(lambda: read_file(t["block_device"], 512))
    r["dev_entries"] = sorted(os.listdir("/dev"))
    r["mmap_memfd_writable"] = attempt(lambda: mmap.mmap(memfd, size, mmap.MAP_SHARED).close() or "mapped")
    r["reopen_memfd_rw"] = attempt(lambda: os.open(f"/proc/self/fd/{memfd}", os.O_RDWR) and "reopened")
    r["write_memfd"] = attempt(lambda: os.write(memfd, b"x"))
    r["unshare_userns"] = attempt(lambda: c(libc.unshare(0x10000000)) or "unshared")
    r["setuid_root"] = attempt(lambda: os.setuid(0))
    r["make_dumpable"] = attempt(lambda: c(libc.prctl(4, 1, 0, 0, 0)) or "dumpable")
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    r["io_uring_setup"] = attempt(lambda: os.close(c(libc.syscall(425, 8, params))) or "created")
    r["fork"] = attempt(lambda: os.waitpid(os.fork() or os._exit(0), 0) and "forked")  # child exits at once
    r["workload"] = attempt(lambda: workload(memfd, size))
    return r


def main():
    cfg = json.loads(sys.argv[1])
    chan = None
    try:
        pol = dict(cfg["policy"])  # the boot-record form, as the kernel would send it
        listeners = []
        if cfg["mode"] == "sibling":  # sockets made before confinement, kept as allowed fds
            a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            a.bind("\0" + cfg["targets"]["abstract"])
            p = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            p.bind(cfg["targets"]["unix_path"])
            os.chmod(cfg["targets"]["unix_path"], 0o777)  # so only confinement can stop a connect
            listeners = [a, p]
            for s in listeners:
                s.listen(8)
        extra = [s.fileno() for s in listeners]
        raised = None
        try:
            report = apply(policy_from_record(pol, extra))
        except ConfinementError as e:
            report, raised = e.report, str(e)
        chan = socket.socket(fileno=cfg["chan"])
        first = {"phase": "applied", "pid": os.getpid(), "report": report.to_dict(), "raised": raised,
                 "fds": open_fds(), "environ_block": environ_block(), "env": dict(os.environ)}
        send(chan, first)
        if raised or cfg["mode"] == "apply":
            return
        if cfg["mode"] == "sibling":
            chan.recv(64)  # "report?"
            import select
            send(chan, {"phase": "sibling", "pending": [bool(select.select([s], [], [], 0)[0]) for s in listeners]})
            chan.recv(64)  # stay alive (listening) until the test has run its positive controls
        elif cfg["mode"] == "hold":
            chan.recv(64)
        elif cfg["mode"] == "segv":
            msg, fd = recv_fd(chan)
            addr = libc.mmap(None, msg["size"], mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            send(chan, {"phase": "mapped", "first_byte": ctypes.string_at(addr, 1).hex()})
            ctypes.memset(addr, 0x41, 1)  # must fault: SIGSEGV
            send(chan, {"phase": "wrote"})
        else:
            msg, fd = recv_fd(chan)
            send(chan, {"phase": "attacks", "results": attacks(cfg, fd, msg["size"])})
            send(chan, {"phase": "exec", "result": attempt(lambda: os.execv("/bin/true", ["true"]))})
    except BaseException:
        if chan is None:
            chan = socket.socket(fileno=cfg["chan"])
        send(chan, {"phase": "error", "traceback": traceback.format_exc()})
        raise


if __name__ == "__main__":
    main()
