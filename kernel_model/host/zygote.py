"""The kernel host's side of the task template process (``tasks/runtime/zygote.py``; docs/confinement.md "Boot").

Every task process used to be a fresh ``python -m tasks.runtime.bootstrap`` that imported its code
(100-300 ms of CPU each). The template is started once, like a task (``posix_spawn``: fd 3 = its
control socket, /dev/null on 0-2, an empty environment, its own session), never reads the image,
its modules or a key, imports trusted library code (never a task program: ``LIBRARIES``) and forks
one process per task. The task is
adopted by this process (a child subreaper while it asks), so the supervisor waits for it, gets
its pidfd and its exit status as for a task it spawned itself. The task confines itself after the
fork exactly as before.

If the template cannot be started, dies or does not answer, ``fork`` raises ``ZygoteError`` and the
supervisor starts tasks with ``posix_spawn`` again.
"""
from __future__ import annotations

import array
import atexit
import ctypes
import os
import select
import signal
import socket
import struct
import sys
import threading

from kernel_model.abi import CHANNEL_FD

PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
ANSWER_S = 30.0  #: a live template answers between two imports; silence this long means it is stuck
#: what every task process gets: LANG only, and no byte code written (the checkout is read-only to tasks)
TASK_ENV = {"LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
TEMPLATE = "tasks.runtime.zygote"

_libc = ctypes.CDLL(None, use_errno=True)
_subreaper_lock = threading.Lock()
_subreaper_users = 0
_subreaper_was = False


class ZygoteError(RuntimeError):
    """The template is gone or could not make the task."""


def _subreaper(on: bool) -> None:
    """Nested: the first user sets PR_SET_CHILD_SUBREAPER, the last one restores what it was."""
    global _subreaper_users, _subreaper_was
    with _subreaper_lock:
        if on:
            if _subreaper_users == 0:
                was = ctypes.c_int(0)
                _libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
                _subreaper_was = bool(was.value)
                if not _subreaper_was and _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                    raise ZygoteError(f"PR_SET_CHILD_SUBREAPER: {os.strerror(ctypes.get_errno())}")
            _subreaper_users += 1
        else:
            _subreaper_users -= 1
            if _subreaper_users == 0 and not _subreaper_was:
                _libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def spawn_like_a_task(module: str, channel: int, devnull: int) -> int:
    """``python -I -m module`` as every task process starts: ``channel`` on fd 3 (``CHANNEL_FD``), ``devnull``
    on fds 0-2, the task environment (``TASK_ENV``), a session of its own. Returns the pid."""
    actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
               (os.POSIX_SPAWN_DUP2, devnull, 2), (os.POSIX_SPAWN_DUP2, channel, CHANNEL_FD)]
    return os.posix_spawn(sys.executable, [sys.executable, "-I", "-m", module], TASK_ENV,
                          file_actions=actions, setsid=True)


class Zygote:
    """One template process. ``fork(channel)`` -> the pid of a new task process (this process's child)."""

    def __init__(self, preload: list[str] = ()):  # type: ignore[assignment]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.pid = spawn_like_a_task(TEMPLATE, theirs.fileno(), devnull)
        except OSError as exc:
            raise ZygoteError(f"cannot start the template: {exc}") from None
        finally:
            theirs.close()
            os.close(devnull)
        self.pidfd = os.pidfd_open(self.pid)
        self.sock = ours
        self.lock = threading.Lock()
        self.dead: str | None = None
        self.forked = 0
        if preload:
            self.preload(preload)

    def preload(self, modules) -> None:
        """Have the template import these (between fork requests, in this order)."""
        names = "\n".join(m for m in modules if m and "\n" not in m)
        if names and self.dead is None:
            try:
                self.sock.send(b"P" + names.encode())
            except OSError as exc:
                self._gone(f"control socket: {exc}")

    def wait_ready(self) -> None:
        """Until the template has imported everything it was asked to."""
        with self.lock:
            if self.dead is not None:
                raise ZygoteError(self.dead)
            try:
                self.sock.send(b"Q")
                if not select.select([self.sock], [], [], ANSWER_S * 4)[0]:
                    self._gone("no answer")
                if self.sock.recv(16) != b"Q":
                    self._gone("it exited")
            except OSError as exc:
                self._gone(f"control socket: {exc}")

    def fork(self, channel: socket.socket, pid_namespace: bool = False) -> int:
        """A new task process with ``channel`` as its fd 3; it waits for its boot record on it.
        ``pid_namespace``: it is pid 1 of a new pid namespace (needs root)."""
        with self.lock:
            if self.dead is not None:
                raise ZygoteError(self.dead)
            _subreaper(True)
            try:
                try:
                    fds = array.array("i", [channel.fileno()])
                    self.sock.sendmsg([b"Fp" if pid_namespace else b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                    if not select.select([self.sock], [], [], ANSWER_S)[0]:
                        self._gone(f"no answer within {ANSWER_S:.0f} s")
                    answer = self.sock.recv(4096)
                except OSError as exc:
                    self._gone(f"control socket: {exc}")
            finally:
                _subreaper(False)
            if not answer:
                self._gone("it exited")
            if answer[:1] != b"F" or len(answer) != 5:
                raise ZygoteError(answer[1:].decode(errors="replace") or "unknown answer")
            self.forked += 1
            return struct.unpack("<i", answer[1:])[0]

    def alive(self) -> bool:
        """Not closed, not known dead, and its process has not exited (its pidfd is readable once it has:
        e.g. killed with the thread that started it, PR_SET_PDEATHSIG)."""
        if self.dead is None and self.pidfd >= 0 and select.select([self.pidfd], [], [], 0)[0]:
            self.dead = f"the template process {self.pid} exited"
            self.close()
        return self.dead is None

    def _gone(self, why: str) -> None:
        self.dead = f"the template process {self.pid} is gone ({why})"
        self.close()
        raise ZygoteError(self.dead)

    def close(self) -> None:
        """Stop the template (its tasks live on: they are this process's children)."""
        if self.dead is None:
            self.dead = "closed"
        if self.sock.fileno() >= 0:
            self.sock.close()
        if self.pidfd >= 0:  # by pidfd: its pid may be reaped and reused meanwhile
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED)
            except ChildProcessError:
                pass
            os.close(self.pidfd)
            self.pidfd = -1


_shared: Zygote | None = None
_shared_lock = threading.Lock()


def shared(preload: list[str]) -> Zygote:
    """The process's one template (started on first use, again after it died); ``preload`` added."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive():
            if _shared is None:
                atexit.register(_close_shared)  # reaped before the kernel's process exits, not after
            _shared = Zygote()
        zygote = _shared
    zygote.preload(preload)
    return zygote


def _close_shared() -> None:
    """At exit: stop and reap the template, so no process of the kernel outlives it (pdeathsig would
    kill it too, but only after the kernel is gone, racing whoever checks that nothing is left)."""
    if _shared is not None:
        _shared.close()


def wanted(environ=os.environ) -> bool:
    """Task processes come from the template unless the kernel's environment says ``L4EMU_ZYGOTE=0``."""
    return environ.get("L4EMU_ZYGOTE", "1") != "0"


#: trusted code every task may use: the libraries the shipped programs import (third-party and the
#: project's own wire/durability libraries) and the root tasks. Never a task program (``tasks.<program>``):
#: a program is the integrator's code, and code that ran in the template would be in every task
#: forked after it, unconfined. Each program imports its own modules after the fork, confined.
LIBRARIES = (
    "cryptography.x509", "cryptography.x509.oid", "cryptography.x509.verification", "cryptography.exceptions",
    "cryptography.hazmat.primitives.hashes", "cryptography.hazmat.primitives.serialization",
    "cryptography.hazmat.primitives.serialization.pkcs7", "cryptography.hazmat.primitives.asymmetric.ec",
    "cryptography.hazmat.primitives.asymmetric.mldsa", "cryptography.hazmat.primitives.asymmetric.mlkem",
    "cryptography.hazmat.primitives.ciphers.aead", "kyber_py.ml_kem", "ssl", "http.client", "email.utils",
    "urllib.parse", "ipaddress", "json", "zlib", "secrets", "hashlib", "base64", "datetime", "tempfile",
    "protocols.layout", "protocols.status", "protocols.crypto", "protocols.crypto_client", "protocols.est_service",
    "protocols.csrattrs", "protocols.netproxy", "protocols.sensor_ring", "durable.fileops", "durable.atomic",
    "durable.sealed",
)


def programs(image) -> list[str]:
    """What the template imports for an image: Sigma0 and Moe first (the kernel starts those two at once,
    then Moe the image's tasks), then the trusted libraries (``LIBRARIES``), never ``tasks.<program>``."""
    del image  # the same trusted set for every image: what a program adds, it imports itself, confined
    return ["roottasks.sigma0", "roottasks.moe", *LIBRARIES]


def prestart(image) -> None:
    """Start the template (and its imports) early, e.g. while the devices and the EST CA start."""
    if wanted():
        try:
            shared(programs(image))
        except ZygoteError:
            pass  # the supervisor says so when it boots

