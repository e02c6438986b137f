"""The kernel's I/O shell: task processes, their channels, memfds, the event loop.

Every task is an OS process started with exactly: fd 3 = its SOCK_SEQPACKET
channel to this process, fds 0/1/2 = /dev/null, an empty environment and no
secrets in argv. (What a task has to say, even a crash, goes through its log
capability.) It gets a
new session, so terminal signals reach only the kernel, which shuts the system
down. Memory reaches a task only as memfds passed with the IPC result that
mapped them (read-only mappings get an O_RDONLY fd, so the OS refuses a
writable mmap). All decisions are the kernel core's (``kernel_model.kernel``);
this module only carries out its effects.
"""
from __future__ import annotations

import array
import dataclasses
import errno
import fcntl
import os
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from capabilities.image import TaskDecl
from capabilities.mapdb import Kind
from kernel_model.abi import MAX_FRAME
from kernel_model.bootrecord import FAULT_MAGIC, BootRecord, ConfinementPolicy
from kernel_model.direct import DirectMode
from kernel_model.events import (
    ConsoleLine,
    Deliver,
    Denied,
    DirectCut,
    DirectOpen,
    Kill,
    MemoryCreated,
    MemoryRetired,
    Pending,
    Remapped,
    Revoked,
    Spawn,
    Traced,
)
from kernel_model.host.console import ConsoleSink, tagged_line
from kernel_model.host.direct_channels import DirectChannels, env_mode
from kernel_model.host.images import PROJECT_ROOT, LoadedImage
from kernel_model.host.scheduler import FairScheduler
from kernel_model.host.workdir_watch import WorkdirWatch
from kernel_model.host.zygote import Zygote, ZygoteError, spawn_like_a_task
from kernel_model.host.zygote import programs as zygote_programs
from kernel_model.host.zygote import shared as shared_zygote
from kernel_model.host.zygote import wanted as zygote_wanted
from kernel_model.kernel import Kernel
from kernel_model.objects import Memory, Task
from kernel_model.wire import Boot, Doorbell, ItemKind, Remap, Revoke
from protocols.exit_codes import ExitCode

MFD_ALLOW_SEALING = getattr(os, "MFD_ALLOW_SEALING", 2)
F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
#: size fixed for good (F_SEAL_SEAL too, so no holder can add F_SEAL_WRITE and freeze the others' writes)
SEALS = getattr(fcntl, "F_SEAL_SHRINK", 2) | getattr(fcntl, "F_SEAL_GROW", 4) | getattr(fcntl, "F_SEAL_SEAL", 1)
EOF_GRACE_S = 1.0  #: a task that closed its channel but lives on is killed after this
EXIT_SIGMA0_DIED = ExitCode.HALTED
NICE_FLOODER = 19
DEFER_US = 500  #: a task over its share waits at most this long for its next frame when nobody else is served
EXIT_SYSCALL_FAULT = ExitCode.SYSCALL_FAULT  #: SIGSYS: the task made a system call outside its allow-list


def now_us() -> int:
    return time.monotonic_ns() // 1000


class TaskProcess:
    def __init__(self, task: Task, pid: int, pidfd: int, sock: socket.socket, fault_fd: int = -1):
        self.task = task
        self.pid = pid
        self.pidfd = pidfd
        self.sock = sock
        self.fault_fd = fault_fd  # the task's fault page: a trapped syscall is written here
        self.eof = False  # its channel is closed
        self.nice = 0  # NICE_FLOODER while it has more than its share of kernel service
        self.status: int | None = None


@runtime_checkable
class HidingConfinement(Protocol):
    """A confinement that also hides given paths and releases a task's uid once its process is reaped
    (the host's, ``confinement.HostConfinement``)."""

    def __call__(self, task: Task, index: int, workdir: Path, decl: TaskDecl | None,
                 hidden: tuple[str, ...] = ()) -> ConfinementPolicy | None: ...

    def release(self, task: Task) -> None: ...


class Supervisor:
    """Boots one image and runs it. Use as a context manager so every process is reaped."""

    def __init__(self, loaded: LoadedImage, console: ConsoleSink, *,
                 confinement: Callable[[Task, int, Path, TaskDecl | None], ConfinementPolicy | None] | None = None,
                 moe_args: list[str] | None = None, run_dir: Path | None = None, zygote: bool | None = None):
        """``zygote``: start task processes by forking the task template (``zygote.py``); None: unless
        the environment says ``L4EMU_ZYGOTE=0``. False: one ``posix_spawn`` per task."""
        self.loaded = loaded
        self.console = console
        self.kernel = Kernel()
        self.confinement = confinement
        self.moe_args = moe_args or []
        self.run_dir = run_dir or PROJECT_ROOT / "var" / "run" / loaded.image.name
        self.sel = selectors.DefaultSelector()
        self.procs: dict[int, TaskProcess] = {}
        self.memfds: dict[int, int] = {}
        self.ro_fds: dict[int, int] = {}
        self.exit_code: int | None = None
        self.exited: list[tuple[str, int]] = []  # (task name, status) in order of death
        self._spawned = 0
        self._wake_r: int | None = None
        self._stop_signal: int | None = None
        self.boot_started_us = 0
        self.on_exit: Callable[[Task, int], None] | None = None
        self._kill_after: dict[int, float] = {}
        self.scheduler: FairScheduler[int] = FairScheduler()  # keyed by id(TaskProcess)
        self._deferred: dict[int, tuple[TaskProcess, int]] = {}  # over their share: not read until resumed
        self.workdir_watch = WorkdirWatch()  # work dirs at their budget -> violation events
        self.use_zygote = zygote_wanted() if zygote is None else zygote
        self.zygote: Zygote | None = None
        self._niced = False  # some task runs at NICE_FLOODER (``_demote`` has work even if nobody floods now)
        self.directs = DirectChannels()  # direct channels' server ends (kernel_model.host.direct_channels)
        forced = env_mode(os.environ.get("L4EMU_DIRECT"))  # tests: the whole suite with channels off / on
        if forced is not None:
            self.kernel.directs.mode = DirectMode(forced)

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def start(self) -> None:
        self.boot_started_us = now_us()
        image = self.loaded.image
        self.console.kernel(f"booting image {image.name!r}: {len(image.tasks)} task(s), RAM {image.ram >> 20} MiB")
        if self.use_zygote:
            try:  # the template imports the programs (names only) while the kernel boots
                self.zygote = shared_zygote(zygote_programs(image))
            except ZygoteError as exc:
                self.console.kernel(f"task template: {exc}; tasks start with posix_spawn")
        self._apply(self.kernel.boot(ram=image.ram, modules=list(self.loaded.modules), moe_args=self.moe_args))

    def handle_signals(self) -> None:
        """Route SIGINT/SIGTERM into the event loop (the CLI calls this; tests do not)."""
        r, w = os.pipe()
        os.set_blocking(w, False)
        os.set_blocking(r, False)
        signal.set_wakeup_fd(w)
        self._wake_r = r
        self.sel.register(r, selectors.EVENT_READ, ("signal", None))

        def _handler(signum, _frame):
            self._stop_signal = signum

        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)

    def run(self, timeout_s: float | None = None, until: Callable[[], bool] | None = None) -> int | None:
        """Run until Moe exits (the system is done), ``until()`` is true, a signal, or the timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.exit_code is None:
            if until is not None and until():
                return None
            if self._stop_signal is not None:
                self.console.kernel(f"{signal.Signals(self._stop_signal).name}: shutting down")
                self.exit_code = 128 + self._stop_signal
                break
            wait = None
            next_deadline = self.kernel.next_deadline()
            if next_deadline is not None:
                wait = max(0.0, (next_deadline - now_us()) / 1e6)
            if self._kill_after:
                grace = max(0.0, min(self._kill_after.values()) - time.monotonic())
                wait = grace if wait is None else min(wait, grace)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                wait = left if wait is None else min(wait, left)
            self.poll(wait)
        return self.exit_code

    def poll(self, timeout_s: float | None) -> None:
        """One turn: at most one frame from each ready channel, least recently served task first
        (``scheduler.FairScheduler``), then exits and signals."""
        if self._deferred:
            timeout_s = DEFER_US / 1e6 if timeout_s is None else min(timeout_s, DEFER_US / 1e6)
        look = self.workdir_watch.wait_us(now_us())
        if look is not None:
            timeout_s = look / 1e6 if timeout_s is None else min(timeout_s, look / 1e6)
        events = self.sel.select(timeout_s)
        channels: dict[int, TaskProcess] = {}
        others = False  # exits, signals
        for key, _mask in events:
            kind, proc = key.data
            if kind == "chan":
                channels[id(proc)] = proc
            else:
                others = True
        served = []
        procs, scheduler = self.procs, self.scheduler
        for who in scheduler.order(channels):
            proc = channels[who]
            if proc.status is None and procs.get(proc.task.id) is proc:
                scheduler.charge(who)
                self._on_channel(proc)
                served.append(proc)
        now = now_us()  # one clock reading for what follows the frames of this turn
        if self._deferred:
            self._resume(now, served)
        if served:
            flooding = scheduler.over_share()
            if flooding or self._niced:
                self._demote(flooding)
            for proc in served if flooding else ():  # over its share: its next frame waits for someone else's
                if id(proc) in flooding and not proc.eof and procs.get(proc.task.id) is proc:
                    self._unregister(proc.sock)
                    self._deferred[id(proc)] = (proc, now + DEFER_US)
        for key, _mask in events if others else ():
            kind, proc = key.data
            if kind == "exit":
                scheduler.forget(id(proc))
                self._on_exit(proc)
            elif kind == "signal":
                try:
                    os.read(key.fd, 64)
                except BlockingIOError:
                    pass
        if others:
            now = now_us()
        self._apply(self.kernel.expire(now))
        for violation in self.workdir_watch.check(now):
            self.kernel.violations.append(violation)
            self.console.violation(violation)
        for task_id, when in list(self._kill_after.items()) if self._kill_after else ():
            doomed = self.procs.get(task_id)
            if doomed is None or doomed.status is not None:
                del self._kill_after[task_id]
            elif when <= time.monotonic():
                del self._kill_after[task_id]
                signal.pidfd_send_signal(doomed.pidfd, signal.SIGKILL)

    def shutdown(self) -> None:
        """Kill every task process and reap it; close every fd. Safe to call twice."""
        for proc in list(self.procs.values()):
            if proc.status is None:
                try:
                    signal.pidfd_send_signal(proc.pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in list(self.procs.values()):
            if proc.status is None:
                try:
                    os.waitpid(proc.pid, 0)
                except ChildProcessError:
                    pass
                proc.status = -1
            self._close_proc(proc)
            self._release(proc)
        self.procs.clear()
        self.directs.close_all()
        for fd in list(self.memfds.values()) + list(self.ro_fds.values()):
            os.close(fd)
        self.memfds.clear()
        self.ro_fds.clear()
        if self._wake_r is not None:
            signal.set_wakeup_fd(-1)
            self._close_fd(self._wake_r)
            self._wake_r = None

    # ------------------------------------------------------------- events in
    def _on_channel(self, proc: TaskProcess) -> None:
        try:
            frame = proc.sock.recv(MAX_FRAME)
        except BlockingIOError:
            return
        except OSError:
            frame = b""
        if not frame:  # channel closed: the process is exiting, or it broke its channel
            proc.eof = True
            self._unregister(proc.sock)
            self._kill_after[proc.task.id] = time.monotonic() + EOF_GRACE_S
            return
        self._apply(self.kernel.syscall(proc.task, frame, now_us()))

    def _on_exit(self, proc: TaskProcess) -> None:
        try:
            _, status = os.waitpid(proc.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = -1
        if code < 0:
            code = 128 - code
        proc.status = code
        fault = self._fault(proc) if code == EXIT_SYSCALL_FAULT else None
        self._close_proc(proc)
        self._release(proc)
        self.workdir_watch.forget(proc.task.id)
        self.directs.forget_task(proc.task)
        del self.procs[proc.task.id]
        task = proc.task
        if fault is not None:
            self.console.kernel(f"{task.describe()} faulted: {fault} not allowed by its seccomp filter")
        self.exited.append((task.describe(), code))
        if self.on_exit is not None:
            self.on_exit(task, code)
        self._apply(self.kernel.task_exited(task, code, now_us()))
        if task is self.kernel.moe:
            self.exit_code = code
        elif task is self.kernel.sigma0:
            self.console.kernel(f"sigma0 exited with {code}: the root pager is gone, halting")
            self.exit_code = EXIT_SIGMA0_DIED

    # ---------------------------------------------------------- effects out
    def _apply(self, effects) -> None:
        for eff in effects:
            if isinstance(eff, Deliver):
                self._deliver(eff)
            elif isinstance(eff, Spawn):
                self._spawn(eff.task, eff.record, [self._fd_for(m, False) for m in eff.memory])
            elif isinstance(eff, Kill):
                proc = self.procs.get(eff.task.id)
                if proc is not None and proc.status is None:
                    try:
                        signal.pidfd_send_signal(proc.pidfd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            elif isinstance(eff, ConsoleLine):
                self.console.log_line(tagged_line(eff.tag, eff.color, eff.text, notice=eff.notice))
            elif isinstance(eff, MemoryCreated):
                self._create_memory(eff.memory)
            elif isinstance(eff, Revoked):
                self._send(eff.task, Revoke(eff.addresses).encode(), [])
            elif isinstance(eff, MemoryRetired):
                self._retire_memory(eff.old, eff.new)
            elif isinstance(eff, Remapped):
                fd = self._fd_for(eff.memory, bool(eff.rights & 0x2))
                self._send(eff.task, Remap(eff.address, eff.size, eff.offset, eff.rights).encode(), [fd])
            elif isinstance(eff, Denied):
                self.console.violation(eff.violation)
            elif isinstance(eff, Traced):
                self.console.trace(eff.text)
            elif isinstance(eff, DirectCut):  # the kernel puts these first: done before any result goes out
                self.directs.cut(eff.handle)
            elif isinstance(eff, DirectOpen):
                self.directs.open(eff, self._send_to_live)
            elif isinstance(eff, Pending):
                self._send(eff.task, Doorbell().encode(), [])

    def _resume(self, now: int, served: list[TaskProcess]) -> None:
        """Deferred channels are read again once another task has been served, or after DEFER_US."""
        for who, (proc, until) in list(self._deferred.items()):
            if until <= now or any(other is not proc for other in served):
                del self._deferred[who]
                if not proc.eof and self.procs.get(proc.task.id) is proc and proc.sock.fileno() >= 0:
                    self.sel.register(proc.sock, selectors.EVENT_READ, ("chan", proc))

    def _demote(self, flooding: set[int]) -> None:
        """Tasks over their share of kernel service run at nice 19 (their whole process group: the task
        and its pid-namespace shim) until they are back within it."""
        for proc in list(self.procs.values()):
            want = NICE_FLOODER if id(proc) in flooding else 0
            if proc.nice != want and proc.status is None:
                try:
                    os.setpriority(os.PRIO_PGRP, proc.pid, want)
                except OSError:  # gone meanwhile, or not permitted (not root: only lowering works)
                    pass
                proc.nice = want
        self._niced = any(proc.nice for proc in self.procs.values())

    def _deliver(self, eff: Deliver) -> None:
        """The memfd passed for each memory item is the backing of what the receiver's address space holds
        at that address *now*: a retirement between the transfer and this delivery (an overmap of the
        same dataspace, another holder's revocation) has moved the mapping to the replacement. If the
        mapping is already gone again, the task gets an empty placeholder, never a retired backing."""
        if not eff.memory:  # the common case: no memory passes, no fds
            self._send(eff.task, eff.result.encode(), ())
            return
        items = [i for i in eff.result.items if i.kind is ItemKind.MEMORY]
        fds, temps = [], []
        for (_mem, writable), item in zip(eff.memory, items, strict=False):
            node = self.kernel.db.get(eff.task.space, Kind.MEMORY, item.index)
            if node is not None and node.live and isinstance(node.obj, Memory) and node.obj.id in self.memfds:
                fds.append(self._fd_for(node.obj, writable))
            else:
                temps.append(self._placeholder(item.offset + item.size))
                fds.append(temps[-1])
        try:
            self._send(eff.task, eff.result.encode(), fds)
        finally:
            for fd in temps:
                os.close(fd)

    @staticmethod
    def _placeholder(size: int) -> int:
        fd = os.memfd_create("revoked", os.MFD_CLOEXEC | MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, F_ADD_SEALS, SEALS)
        return fd

    def _send(self, task: Task, frame: bytes, fds: list[int] | tuple[()]) -> None:
        proc = self.procs.get(task.id)
        if proc is None or proc.status is not None:
            return
        try:
            if fds:
                proc.sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            else:
                proc.sock.send(frame)
        except BlockingIOError:
            # The task does not read its channel (only possible with a flood of notices): it is faulted.
            self.console.kernel(f"{task.describe()} does not read its channel; killing it")
            self.kernel.kill_task(task, status=None)
            signal.pidfd_send_signal(proc.pidfd, signal.SIGKILL)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise

    def _send_to_live(self, task: Task, frame: bytes, fds: list[int]) -> bool:
        """``_send`` that says whether the task's process is there to get it."""
        proc = self.procs.get(task.id)
        if proc is None or proc.status is not None or proc.eof:
            return False
        self._send(task, frame, fds)
        return proc.status is None

    def _create_memory(self, mem: Memory) -> None:
        """One memfd per memory object, sealed at its size: no holder can shrink it (which would SIGBUS
        every other holder, the kernel's copy on retirement and Moe) or grow it past its quota."""
        fd = os.memfd_create(mem.describe(), os.MFD_CLOEXEC | MFD_ALLOW_SEALING)
        os.ftruncate(fd, mem.size)
        if mem.content:
            os.pwrite(fd, mem.content, 0)
        os.fchmod(fd, 0o600)  # a task running under another uid cannot reopen it via /proc
        fcntl.fcntl(fd, F_ADD_SEALS, SEALS)
        self.memfds[mem.id] = fd

    def _retire_memory(self, old: Memory, new: Memory) -> None:
        """Copy the old backing into a fresh memfd; the old one is closed here (holders' mmaps keep it alive
        only in the processes that were told to let go)."""
        self._create_memory(new)
        src, dst = self.memfds.pop(old.id), self.memfds[new.id]
        offset = 0
        while offset < old.size:
            chunk = os.pread(src, min(1 << 20, old.size - offset), offset)
            if not chunk:
                break
            os.pwrite(dst, chunk, offset)
            offset += len(chunk)
        os.close(src)
        ro = self.ro_fds.pop(old.id, None)
        if ro is not None:
            os.close(ro)

    def _fd_for(self, mem: Memory, writable: bool) -> int:
        fd = self.memfds[mem.id]
        if writable:
            return fd
        ro = self.ro_fds.get(mem.id)
        if ro is None:
            ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            self.ro_fds[mem.id] = ro
        return ro

    def _spawn(self, task: Task, record: BootRecord, boot_fds: list[int]) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        devnull = os.open(os.devnull, os.O_RDWR)
        self._spawned += 1
        workdir = self.run_dir / (task.name or f"task{task.id}")
        workdir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)  # no task reaches another's work dir by path (its own is bound back)
        workdir.chmod(0o700)  # private to the task (its uid owns it once confined)
        decl = next((t for t in self.loaded.image.tasks if t.name == task.name), None) if not record.root else None
        # network authority: the image's network.connect for this task, carried once (the record's endpoints)
        network = decl.connect if decl is not None else ()
        policy = None
        if self.confinement is not None:
            if isinstance(self.confinement, HidingConfinement):  # the host's: hide the image and its boot modules
                policy = self.confinement(task, self._spawned, workdir, decl, hidden=self._secret_paths())
            else:
                policy = self.confinement(task, self._spawned, workdir, decl)
            if policy is not None:
                policy = dataclasses.replace(policy, network=bool(network))
        record = dataclasses.replace(record, workdir=str(workdir), network=network, confine=policy,
                                     report_confinement=self._spawned == 1, fault_page=True)
        fault_fd = os.memfd_create(f"fault:{task.describe()}", os.MFD_CLOEXEC | MFD_ALLOW_SEALING)
        os.ftruncate(fault_fd, 4096)
        fcntl.fcntl(fault_fd, F_ADD_SEALS, SEALS)
        pid = None
        if self.zygote is not None:  # forked from the template: its code is imported already
            try:
                pid_ns = record.confine is not None and record.confine.pid_namespace and os.geteuid() == 0
                pid = self.zygote.fork(child_sock, pid_namespace=pid_ns)
            except ZygoteError as exc:
                self.console.kernel(f"task template: {exc}; tasks start with posix_spawn")
                self.zygote = None
                parent_sock.close()  # a half-made task may hold that channel: a fresh one
                child_sock.close()
                parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if pid is None:
                pid = spawn_like_a_task("tasks.runtime.bootstrap", child_sock.fileno(), devnull)
        finally:
            child_sock.close()
            os.close(devnull)
        pidfd = os.pidfd_open(pid)
        parent_sock.setblocking(False)
        proc = TaskProcess(task, pid, pidfd, parent_sock, fault_fd)
        self.procs[task.id] = proc
        self.sel.register(parent_sock, selectors.EVENT_READ, ("chan", proc))
        self.sel.register(pidfd, selectors.EVENT_READ, ("exit", proc))
        if record.confine is not None and record.confine.workdir_image:  # a budget of its own: watch it fill
            self.workdir_watch.watch(task.id, task.describe(), pid, str(workdir))
        self._send(task, Boot(record).encode(), [*boot_fds, fault_fd])

    # --------------------------------------------------------------- helpers
    def _secret_paths(self) -> tuple[str, ...]:
        """The image file and its boot modules (key material): Moe hands them out as ``rom`` dataspaces,
        no task reads them from the filesystem."""
        base = self.loaded.path.parent
        return (str(self.loaded.path), *(str(base / mod.path) for mod in self.loaded.image.modules))

    def _release(self, proc: TaskProcess) -> None:
        release = getattr(self.confinement, "release", None)
        if release is not None:
            release(proc.task)  # its uid may be leased again: the process is reaped

    def _unregister(self, fileobj) -> None:
        try:
            self.sel.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def _close_fd(self, fd: int) -> None:
        self._unregister(fd)
        try:
            os.close(fd)
        except OSError:
            pass

    def _close_proc(self, proc: TaskProcess) -> None:
        self._unregister(proc.sock)
        proc.sock.close()
        self._close_fd(proc.pidfd)
        if proc.fault_fd >= 0:
            self._close_fd(proc.fault_fd)
            proc.fault_fd = -1

    @staticmethod
    def _fault(proc: TaskProcess) -> str:
        """What the task's SIGSYS reporter wrote into its fault page: "syscall N (name)"."""
        try:
            magic, nr, _arch = struct.unpack("<III", os.pread(proc.fault_fd, 12, 0))
        except (OSError, struct.error):
            magic = nr = 0
        if magic != FAULT_MAGIC:
            return "a system call (unknown)"
        try:
            import pyseccomp
            name = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, nr)
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            name = "?"
        return f"syscall {nr} ({name})"

    def inject_irq(self, name: str) -> None:
        """Trigger a named IRQ object from outside the system (tests, a simulated device)."""
        self._apply(self.kernel.inject_irq(name))

    def process(self, name: str) -> TaskProcess:
        """The live process of the task called ``name`` (tests use it to kill a task)."""
        for proc in self.procs.values():
            if proc.task.name == name and proc.status is None:
                return proc
        raise KeyError(name)
