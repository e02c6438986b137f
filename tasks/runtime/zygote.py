"""The template process task processes are forked from (a zygote, as Android's; docs/confinement.md "Boot").

Started by the kernel host (``kernel_model/host/zygote.py``) exactly like a task, as
``python -I -m tasks.runtime.zygote`` with its control socket on fd 3, /dev/null on fds 0-2 and an
empty environment, in a session of its own. It never reads the image, a boot module or a key: all
it gets is the names of the modules to import (the image's programs) and, per task, the task's end
of a fresh channel. It imports code, and forks:

* ``P`` + module names, one per line: import them (one at a time, answering fork requests in
  between, so a task never waits for an import it does not need);
* ``F`` with one fd (the task's channel), ``Fp`` for a task in a pid namespace of its own (the
  intermediate unshares it: the task is its pid 1, no shim): fork an intermediate that forks the task and exits at
  once; the task is then an orphan and the kernel host, a child subreaper while it asks, adopts it
  (``PR_SET_CHILD_SUBREAPER``): it is the host's child, which gets its pidfd and its exit status as
  for any other task. Once the intermediate is reaped (so the adoption is done), the answer is
  ``F`` + the task's pid; ``E`` + a reason if no task was made;
* ``Q``: answered with ``Q`` once every module asked for is imported.

The task (the grandchild) starts its own session, keeps fd 3 = its channel and /dev/null on 0-2,
closes every other fd (the control socket included) and runs ``tasks.runtime.bootstrap.run``: it
reads its boot record from the channel, which the host sends only after this answer, i.e. after
the adoption, and then confines itself exactly as a task started with ``posix_spawn`` does.
The template forks only while it has a single thread.
"""
from __future__ import annotations

import array
import collections
import gc
import importlib
import os
import select
import socket
import struct
import sys

from kernel_model.abi import CHANNEL_FD
from tasks.runtime import bootstrap

#: what every task imports (bootstrap, its channel, Env, confinement and libseccomp)
BASE_MODULES = ("tasks.runtime.channel", "tasks.runtime.env", "tasks.runtime.confine", "tasks.runtime.serve",
                "tasks.runtime.shm", "tasks.runtime.memory", "tasks.runtime.syscalls", "pyseccomp", "fcntl")
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def trusted(name: str) -> bool:
    """Code the template may run: anything but a task program (``tasks.<program>``, the integrator's code,
    whose module-level code must run only in its own task, confined); the runtime is trusted."""
    return not name.startswith("tasks.") or name.startswith("tasks.runtime.")


def _preload(name: str) -> None:
    if not trusted(name):
        return
    try:
        importlib.import_module(name)
    except BaseException:  # the task that needs it imports it again and reports the error
        pass


CLONE_NEWPID = 0x20000000


def _unshare_pid() -> None:
    """Children of the caller go into a new pid namespace (if that fails, the task makes its own, with a shim)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWPID)


def _compact() -> None:
    """After a batch of imports: their garbage collected and the freed heap given back, once, so the
    pages every task shares hold only what is live."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _become_task(chan: int) -> None:
    """In the forked task: its own session, fd 3 = its channel, /dev/null on 0-2, nothing else; then boot."""
    code = 1
    try:
        os.setsid()
        if chan != CHANNEL_FD:
            os.dup2(chan, CHANNEL_FD)
            os.close(chan)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            if fd != null:
                os.dup2(null, fd)
        if null > 2:
            os.close(null)
        os.closerange(CHANNEL_FD + 1, os.sysconf("SC_OPEN_MAX"))  # the control socket, the pid pipe
        gc.enable()
        code = bootstrap.run()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code if 0 <= code < 256 else 1)


def fork_task(chan: int, pid_namespace: bool = False) -> int:
    """Double fork: the task is orphaned as soon as its intermediate exits. Returns its pid (as the host
    sees it). ``pid_namespace``: the intermediate unshares a pid namespace first, so the task is pid 1
    of its own from its first instruction: no shim process stays behind it (``confine.pid_namespace``)."""
    if threads() != 1:
        raise OSError(f"the template has {threads()} threads; it forks only with one")
    r, w = os.pipe()
    gc.freeze()  # the imported objects stay where they are: no collection in a task touches their pages
    mid = os.fork()
    if mid == 0:
        try:
            os.close(r)
            if pid_namespace:
                _unshare_pid()
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _become_task(chan)
            os.write(w, struct.pack("<i", pid))
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 4)
    finally:
        os.close(r)
        os.waitpid(mid, 0)  # reaped: the task's adoption by the host is complete
    if len(data) != 4:
        raise OSError("the intermediate process did not fork")
    return struct.unpack("<i", data)[0]


def serve(ctrl: socket.socket) -> int:
    pending: collections.deque[str] = collections.deque(BASE_MODULES)
    while True:
        if pending and not select.select([ctrl], [], [], 0)[0]:
            _preload(pending.popleft())
            if not pending:
                _compact()
            continue
        fds = array.array("i")
        try:
            msg, anc, _flags, _addr = ctrl.recvmsg(1 << 16, socket.CMSG_SPACE(4 * fds.itemsize))
        except OSError:
            return 0
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        if not msg:
            return 0  # the host is gone
        if msg[:1] == b"P":
            pending.extend(n for n in msg[1:].decode().split("\n") if n and n not in sys.modules)
        elif msg[:1] == b"Q":  # a barrier: answered once everything asked for is imported
            while pending:
                _preload(pending.popleft())
                if not pending:
                    _compact()
            ctrl.send(b"Q")
        elif msg[:1] == b"F" and len(fds) == 1:
            try:
                reply = b"F" + struct.pack("<i", fork_task(fds[0], pid_namespace=msg[1:2] == b"p"))
            except OSError as exc:
                reply = b"E" + str(exc).encode()
            ctrl.send(reply)
        else:
            ctrl.send(b"E" + b"bad request")
        for fd in fds:
            os.close(fd)


def main() -> int:
    gc.disable()  # no freed holes in the template's pages; each task enables its collector
    bootstrap.tune_malloc()
    os.closerange(CHANNEL_FD + 1, os.sysconf("SC_OPEN_MAX"))  # whatever the kernel host's shell left open
    ctrl_fd = os.dup(CHANNEL_FD)  # fd 3 stays free: it is each task's channel
    os.close(CHANNEL_FD)
    ctrl = socket.socket(fileno=ctrl_fd)
    ctrl.set_inheritable(False)
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # dies with the host
    # nothing of the same uid may ptrace it or write /proc/<pid>/mem: every later task is forked from it
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    return serve(ctrl)


if __name__ == "__main__":
    os._exit(main())
