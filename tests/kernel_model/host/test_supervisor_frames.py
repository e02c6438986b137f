"""The supervisor's per-frame path (``poll``: select, fair order, recv, kernel, deliver, send) with the
task ends of two channels held by the test: round trips arrive intact, a hostile frame gets
``L4_IPC_SEABORTED`` and a malformed-frame violation, and the honest pair carries on."""
from __future__ import annotations

import selectors
import socket
import struct

import pytest

from capabilities.mapdb import Kind
from capabilities.rights import CapRights
from kernel_model.abi import INVALID_CAP, EnvSlot, IpcError, IpcFlags, MsgTag, sel, timeouts
from kernel_model.events import Rule
from kernel_model.host.console import RecordingConsole
from kernel_model.host.images import PROJECT_ROOT, load_image
from kernel_model.host.supervisor import Supervisor, TaskProcess
from kernel_model.objects import IpcGate, Task, Thread
from kernel_model.wire import Invocation, Result, decode_kernel_frame


def _task(sup: Supervisor, name: str) -> Task:
    t = Task(name=name)
    th = Thread(name=f"{name}.main", task=t)
    t.threads.append(th)
    t.started = True
    sup.kernel.tasks[t.id] = t
    sup.kernel.db.insert_root(t.space, Kind.OBJECT, EnvSlot.THREAD, th, int(CapRights.R | CapRights.W))
    return t


class Pair:
    """A client and an echo server in a supervisor's kernel; the test holds the task ends of their channels."""

    def __init__(self, tmp_path):
        self.console = RecordingConsole()
        self.sup = Supervisor(load_image(PROJECT_ROOT / "images" / "hello.yaml"), self.console, run_dir=tmp_path)
        self.client, self.server = _task(self.sup, "client"), _task(self.sup, "server")
        gate = IpcGate(name="svc", label=0x10, thread=self.server.threads[0])
        self.sup.kernel.db.insert_root(self.server.space, Kind.OBJECT, 16, gate, int(CapRights.parse("svr")))
        self.sup.kernel.db.insert_root(self.client.space, Kind.OBJECT, 16, gate, int(CapRights.R | CapRights.W))
        self.ends: dict[int, socket.socket] = {}
        for task in (self.client, self.server):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            theirs.settimeout(30)  # a guard against a hang, not a speed expectation
            proc = TaskProcess(task, pid=-1, pidfd=-1, sock=ours)
            self.sup.procs[task.id] = proc
            self.sup.sel.register(ours, selectors.EVENT_READ, ("chan", proc))
            self.ends[task.id] = theirs

    def send(self, task: Task, frame: bytes) -> None:
        self.ends[task.id].send(frame)
        self.sup.poll(0)

    def result(self, task: Task) -> Result:
        frame = decode_kernel_frame(self.ends[task.id].recv(65536))
        assert isinstance(frame, Result)
        return frame

    def round_trip(self, n: int) -> None:
        data = struct.pack("<Q", n) * 8
        self.send(self.client, Invocation(IpcFlags.CALL, sel(16), MsgTag(0x100, 8), data).encode())
        got = self.result(self.server)
        assert got.error is IpcError.OK and got.data == data and got.label == 0x10 | int(CapRights.W)
        self.send(self.server, Invocation(IpcFlags.REPLY_AND_WAIT, INVALID_CAP, MsgTag(7, 8), data[::-1],
                                          timeout=timeouts(0, None)).encode())
        back = self.result(self.client)
        assert back.error is IpcError.OK and back.data == data[::-1] and back.tag == MsgTag(7, 8)

    def close(self) -> None:
        for proc in list(self.sup.procs.values()):
            self.sup._unregister(proc.sock)
            proc.sock.close()
        self.sup.procs.clear()
        for end in self.ends.values():
            end.close()
        self.sup.sel.close()


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path)
    p.send(p.server, Invocation(IpcFlags.WAIT).encode())
    yield p
    p.close()


def test_round_trips_through_the_event_loop_arrive_intact(pair):
    for n in range(20):
        pair.round_trip(n)
    assert pair.sup.kernel.ipc_by_task == {"server": 21, "client": 20}
    assert not pair.console.violations


@pytest.mark.parametrize("hostile", [
    b"", b"\x01", b"\x02" + bytes(57), bytes(58), b"\x01\xff" + bytes(56),
    Invocation(IpcFlags.CALL, sel(16), MsgTag(0x100, 1), b"12345678").encode()[:-1],
    struct.pack("<BBHIQQQQQQH", 1, 3, 1, 0, sel(16), 0x100 << 16 | 1 << 6 | 63, 0, INVALID_CAP, 0, 0, 0)
    + bytes(32),  # 63 words + 2 x 1 item: more registers than there are
])
def test_a_hostile_frame_gets_seaborted_and_a_violation_and_the_pair_carries_on(pair, hostile):
    pair.round_trip(1)
    if not hostile:  # an empty frame: the channel is closing; the kernel stops reading it
        pair.ends[pair.client.id].send(hostile)
        pair.sup.poll(0)
        assert pair.sup.procs[pair.client.id].eof
        return
    pair.send(pair.client, hostile)
    res = pair.result(pair.client)
    assert res.error is IpcError.SEABORTED
    (violation,) = pair.console.violations
    assert violation.rule is Rule.MALFORMED_FRAME and violation.task == "client"
    pair.round_trip(2)
