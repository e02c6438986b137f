"""``make bench`` section ``kernel`` (``tests/bench/run.py --only kernel``): the kernel path alone.

Three layers of one IPC round trip (a 64-byte call and the server's reply-and-wait, two
syscalls), each measured in this process, interleaved with the end-to-end baselines:

- the pure kernel core: ``Kernel.syscall`` driven with prebuilt frames (decode, capability
  lookup, rendezvous, effects) -- µs of kernel CPU per syscall;
- the supervisor's per-frame cost: ``Supervisor.poll`` on two channels whose task ends this
  process holds (select, fair scheduling, recv, syscall, apply the effects, encode the result,
  send) -- minus nothing: it includes the socket calls the kernel makes for each frame;
- the end-to-end kernel-path round trip between two task processes (the ``ipc`` section's
  image) next to a socketpair round trip between two Python processes, measured in the same run;
- the CPU of one such round trip summed over every process (kernel + both tasks; both socketpair
  processes), which a loaded machine moves far less than the wall-clock time: measured as the
  difference between a long and a short run (boot and start-up cancel out), unconfined, so that
  every task is a direct child of this process and its CPU is counted when it is reaped.
"""
from __future__ import annotations

import gc
import os
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

from capabilities.mapdb import Kind
from capabilities.rights import CapRights
from kernel_model.abi import INVALID_CAP, EnvSlot, IpcError, IpcFlags, MsgTag, sel, timeouts
from kernel_model.events import Deliver
from kernel_model.kernel import Kernel
from kernel_model.objects import IpcGate, Task, Thread
from kernel_model.wire import Invocation

PAYLOAD = bytes(64)
GATE_SLOT = 16


def _task(k: Kernel, name: str) -> Task:
    t = Task(name=name)
    th = Thread(name=f"{name}.main", task=t)
    t.threads.append(th)
    t.started = True
    k.tasks[t.id] = t
    k.db.insert_root(t.space, Kind.OBJECT, EnvSlot.TASK, t, int(CapRights.R))
    k.db.insert_root(t.space, Kind.OBJECT, EnvSlot.THREAD, th, int(CapRights.R | CapRights.W | CapRights.S))
    return t


def echo_pair(k: Kernel) -> tuple[Task, Task, bytes, bytes]:
    """A client with a gate to an echo server bound to it, the server waiting; the two frames of a round
    trip: the client's call and the server's reply-and-wait (what ``tasks/testing/echo_server`` sends)."""
    client, server = _task(k, "client"), _task(k, "server")
    gate = IpcGate(name="svc", label=0x10, thread=server.threads[0])
    k.db.insert_root(server.space, Kind.OBJECT, GATE_SLOT, gate, int(CapRights.parse("svr")))
    k.db.insert_root(client.space, Kind.OBJECT, GATE_SLOT, gate, int(CapRights.R | CapRights.W))
    k.syscall(server, Invocation(IpcFlags.WAIT).encode(), 0)
    call = Invocation(IpcFlags.CALL, sel(GATE_SLOT), MsgTag(0x100, len(PAYLOAD) // 8), PAYLOAD).encode()
    reply = Invocation(IpcFlags.REPLY_AND_WAIT, INVALID_CAP, MsgTag(0x100, len(PAYLOAD) // 8), PAYLOAD,
                       timeout=timeouts(0, None)).encode()
    return client, server, call, reply


def pure_kernel_us(rounds: int) -> float:
    """µs of kernel CPU per syscall: ``Kernel.syscall`` alone, call + reply-and-wait per round."""
    k = Kernel()
    client, server, call, reply = echo_pair(k)
    syscall = k.syscall
    effects = syscall(client, call, 0) + syscall(server, reply, 0)  # check once that the pair works
    delivered = [e for e in effects if isinstance(e, Deliver)]
    assert [d.task for d in delivered] == [server, client], effects
    assert delivered[1].result.error == IpcError.OK and delivered[1].result.data == PAYLOAD
    gc_was = gc.isenabled()
    gc.disable()
    try:
        start = time.process_time_ns()
        for _ in range(rounds):
            syscall(client, call, 0)
            syscall(server, reply, 0)
        elapsed = time.process_time_ns() - start
    finally:
        if gc_was:
            gc.enable()
    return elapsed / rounds / 2 / 1000


def supervisor_us(rounds: int) -> float:
    """µs per frame of the supervisor's event loop: ``poll`` reads the frame, runs the kernel, sends the
    result; both task ends of the channels are sockets in this process."""
    from kernel_model.host.console import RecordingConsole
    from kernel_model.host.images import PROJECT_ROOT, load_image
    from kernel_model.host.supervisor import Supervisor, TaskProcess

    with tempfile.TemporaryDirectory() as tmp:
        sup = Supervisor(load_image(PROJECT_ROOT / "images" / "hello.yaml"), RecordingConsole(), run_dir=Path(tmp))
        client, server, call, reply = echo_pair(sup.kernel)
        ends = {}
        for task in (client, server):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            proc = TaskProcess(task, pid=-1, pidfd=-1, sock=ours)
            sup.procs[task.id] = proc
            sup.sel.register(ours, 1, ("chan", proc))  # selectors.EVENT_READ
            ends[task.id] = theirs
        c_end, s_end = ends[client.id], ends[server.id]
        poll = sup.poll

        def one_round() -> bytes:
            c_end.send(call)
            poll(0)
            s_end.recv(65536)
            s_end.send(reply)
            poll(0)
            return c_end.recv(65536)

        one_round()
        try:
            start = time.process_time_ns()
            for _ in range(rounds):
                one_round()
            elapsed = time.process_time_ns() - start
            # the two task ends' own socket calls, measured alone, are not the supervisor's
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            start = time.process_time_ns()
            for _ in range(rounds):
                a.send(call)
                b.recv(65536)
                b.send(reply)
                a.recv(65536)
            ends_ns = time.process_time_ns() - start
            a.close()
            b.close()
        finally:
            for proc in list(sup.procs.values()):
                sup._unregister(proc.sock)
                proc.sock.close()
            sup.procs.clear()
            for end in ends.values():
                end.close()
            sup.sel.close()
    return (elapsed - ends_ns) / rounds / 2 / 1000


def _cpu_us(run) -> tuple[float, float]:
    """µs of CPU ``run()`` took in this process and in the children it reaped."""
    self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    run()
    self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime) * 1e6,
            (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) * 1e6)


def _socketpair_round_trips(rounds: int) -> None:
    """The ``ipc`` section's socketpair baseline (200 + 5 x ``rounds`` round trips of 64 B to an echoing
    child), with the child reaped as soon as it is done, so that its CPU is counted."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the echo process
        status = 0
        try:
            a.close()
            while data := b.recv(4096):
                b.send(data)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    b.close()
    try:
        for _ in range(200 + 5 * rounds):
            a.send(PAYLOAD)
            a.recv(4096)
    finally:
        a.close()
        os.waitpid(pid, 0)


def cpu_per_round_trip(rounds: int) -> tuple[float, float, float]:
    """CPU µs per kernel-path round trip: (kernel process, both tasks), and per socketpair round trip (both
    processes). The client times 5 x ``rounds`` calls after a warm-up; a run of ``rounds // 5`` is
    subtracted from one of ``rounds``."""
    from tests.bench.run import kernel_rtt

    short = max(rounds // 5, 1)
    k_long, t_long = _cpu_us(lambda: kernel_rtt(rounds, confine=False))
    k_short, t_short = _cpu_us(lambda: kernel_rtt(short, confine=False))
    p_long = sum(_cpu_us(lambda: _socketpair_round_trips(rounds)))
    p_short = sum(_cpu_us(lambda: _socketpair_round_trips(short)))
    n = 5 * (rounds - short)
    return (k_long - k_short) / n, (t_long - t_short) / n, (p_long - p_short) / n


def bench_kernel_path(args) -> list[tuple[str, str, str]]:
    from tests.bench.run import kernel_rtt, socketpair_rtt

    micro_rounds = max(2000, args.rounds * 4)
    pure, sup, e2e, pair, cpu = [], [], [], [], []
    for _ in range(args.repeats):  # interleaved, so drift hits all alike
        pure.append(pure_kernel_us(micro_rounds))
        sup.append(supervisor_us(micro_rounds // 2))
        pair.append(socketpair_rtt(args.rounds, relay=False))
        e2e.append(kernel_rtt(args.rounds, confine=not args.no_confine))
        cpu.append(cpu_per_round_trip(args.rounds))
    p, s, e, d = (statistics.median(x) for x in (pure, sup, e2e, pair))
    ck, ct, cp = (statistics.median(c[i] for c in cpu) for i in range(3))
    return [
        ("kernel core: CPU per syscall (Kernel.syscall, call + reply-and-wait, 64 B)", f"{p:.1f} µs",
         f"target <= 10 µs: {p / 10:.2f}x of it"),
        ("  supervisor per frame (poll: select, recv, kernel, send), task ends in-process", f"{s:.1f} µs",
         f"kernel core = {p / s:.0%} of it"),
        ("IPC round trip (64 B) on the kernel path, two task processes", f"{e:.1f} µs",
         f"kernel path/socketpair = {e / d:.2f}x (target <= 4x)"),
        ("  socketpair round trip, 2 Python processes, same run", f"{d:.1f} µs", ""),
        ("CPU per kernel-path round trip, all processes (unconfined)", f"{ck + ct:.1f} µs",
         f"ours/socketpair = {(ck + ct) / cp:.2f}x of CPU"),
        ("  of it the kernel process (2 frames)", f"{ck:.1f} µs", f"{ck / 2:.1f} µs per syscall"),
        ("  of it the client and server tasks", f"{ct:.1f} µs", ""),
        ("  CPU per socketpair round trip, both processes", f"{cp:.1f} µs", ""),
    ]
