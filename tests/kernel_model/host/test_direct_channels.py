"""kernel_model/host/direct_channels.py: ends handed out, and a cut that is complete when it returns."""
from __future__ import annotations

import array
import socket

import pytest

from kernel_model.events import DirectOpen
from kernel_model.host.direct_channels import DirectChannels, env_mode
from kernel_model.objects import Task
from kernel_model.wire import DIRECT_CLIENT, DIRECT_SERVER, DirectEnd, decode_kernel_frame


def _open() -> tuple[DirectChannels, dict[str, socket.socket], Task, Task]:
    host = DirectChannels()
    client, server = Task(name="client"), Task(name="server")
    got: dict[str, socket.socket] = {}

    def send(task: Task, frame: bytes, fds: list[int]) -> bool:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # the task's kernel channel
        a.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        data, anc, _f, _a = b.recvmsg(64, socket.CMSG_SPACE(4))
        end = decode_kernel_frame(data)
        assert isinstance(end, DirectEnd)
        fd = array.array("i", anc[0][2])[0]
        got["client" if end.role == DIRECT_CLIENT else "server"] = socket.socket(fileno=fd)
        assert end.word == (0x5000 if end.role == DIRECT_CLIENT else 0x14)
        assert end.role in (DIRECT_CLIENT, DIRECT_SERVER)
        return True

    host.open(DirectOpen(7, client, 0x5000, server, 0x14), send)
    return host, got, client, server


def test_the_two_ends_talk_and_the_host_keeps_only_the_server_end():
    host, ends, _c, _s = _open()
    ends["client"].send(b"request")
    assert ends["server"].recv(64) == b"request"
    assert list(host.ends) == [7]


def test_a_cut_shuts_both_ways_and_drains_what_the_server_has_not_read():
    host, ends, _c, _s = _open()
    ends["client"].send(b"written before the cut")
    host.cut(7)
    assert host.drained == 1 and not host.ends
    ends["server"].setblocking(False)
    assert ends["server"].recv(64) == b""  # nothing written before the cut reaches the server after it
    with pytest.raises(OSError):
        ends["client"].send(b"after the cut")  # EPIPE: the client falls back to the kernel path
    assert ends["client"].recv(64) == b""  # a reply it waited for: EOF


def test_a_dead_tasks_channels_are_forgotten():
    host, _ends, client, _s = _open()
    host.forget_task(client)
    assert not host.ends


def test_the_suite_switch():
    assert (env_mode(None), env_mode(""), env_mode("0"), env_mode("1")) == (None, None, 0, 2)
    with pytest.raises(ValueError):
        env_mode("yes")


def test_a_kernel_out_of_fds_keeps_the_calls_on_the_kernel_path(monkeypatch):
    """Channels cost the kernel process one fd each: running out is no exception in the kernel."""
    def no_fds(*_args):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(socket, "socketpair", no_fds)
    host = DirectChannels()
    sent: list[Task] = []
    host.open(DirectOpen(7, Task(name="client"), 0x5000, Task(name="server"), 0x14),
              lambda task, frame, fds: bool(sent.append(task)) or True)
    assert not host.ends and not sent and host.refused == 1
    host.cut(7)  # the kernel's record of it is cut later: nothing to do, nothing raised
