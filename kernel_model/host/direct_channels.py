"""The host's half of direct channels: socket pairs made, handed out, and cut (``kernel_model.direct``).

``open`` makes a SOCK_SEQPACKET pair, sends the client end to the client and the server end to
the server (a ``wire.DirectEnd`` frame each, the fd in SCM_RIGHTS) and keeps a dup of the server
end: the kernel's handle. ``cut`` shuts that socket down for both directions -- the client's
next send fails with EPIPE, a reply it waits for ends in EOF, the server's end reads EOF -- then
drains what the client wrote that the server has not read yet (so nothing written before the
cut is served after it), then closes the dup. The supervisor carries a cut out before any other
effect of the same kernel step, so it is complete before the result of the operation that caused
it is delivered.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable

from kernel_model.events import DirectOpen
from kernel_model.objects import Task
from kernel_model.wire import DIRECT_CLIENT, DIRECT_SERVER, DirectEnd

#: how a frame with fds reaches a task (the supervisor's ``_send``); False: the task is not there
SendFrame = Callable[[Task, bytes, list[int]], bool]
DRAIN_MAX = 4096  #: frames drained from a cut channel at most (a socket holds far fewer)


class DirectChannels:
    def __init__(self) -> None:
        self.ends: dict[int, socket.socket] = {}  #: handle -> the host's dup of the server end
        self.by_task: dict[int, set[int]] = {}  #: task id -> handles it is part of
        self.drained = 0  #: frames discarded by cuts (written by a client, never read by its server)
        self.refused = 0  #: channels not made (no socket pair to be had): those calls stay on the kernel path
        self.handed: dict[int, set[int]] = {}  #: task id -> socket inodes of every end handed to it (tests: H2)

    def open(self, eff: DirectOpen, send: SendFrame) -> None:
        try:
            client_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:  # the kernel process is out of fds (or memory): the calls stay on the kernel path
            self.refused += 1
            return
        try:
            ok = send(eff.server, DirectEnd(DIRECT_SERVER, eff.handle, eff.label).encode(), [server_end.fileno()])
            ok = ok and send(eff.client, DirectEnd(DIRECT_CLIENT, eff.handle, eff.selector).encode(),
                             [client_end.fileno()])
        except BaseException:
            client_end.close()
            raise
        for task, end in ((eff.server, server_end), (eff.client, client_end)):
            self.handed.setdefault(task.id, set()).add(os.fstat(end.fileno()).st_ino)
        client_end.close()
        if not ok:  # one of them is gone: the kernel cuts the record when it learns of the death
            server_end.shutdown(socket.SHUT_RDWR)
            server_end.close()
            return
        server_end.setblocking(False)
        self.ends[eff.handle] = server_end
        for task in (eff.client, eff.server):
            self.by_task.setdefault(task.id, set()).add(eff.handle)

    def cut(self, handle: int) -> None:
        sock = self.ends.pop(handle, None)
        if sock is None:
            return
        for handles in self.by_task.values():
            handles.discard(handle)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for _ in range(DRAIN_MAX):
            try:
                if not sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_TRUNC):
                    break
            except (BlockingIOError, OSError):
                break
            self.drained += 1
        sock.close()

    def forget_task(self, task: Task) -> None:
        """The task's process is gone (its own ends closed with it): drop its bookkeeping."""
        for handle in self.by_task.pop(task.id, set()):
            if handle in self.ends:
                self.cut(handle)

    def close_all(self) -> None:
        for handle in list(self.ends):
            self.cut(handle)
        self.by_task.clear()

    def fds(self) -> list[int]:
        return [s.fileno() for s in self.ends.values()]


def env_mode(value: str | None) -> int | None:
    """``L4EMU_DIRECT``: "0" = off for every gate, "1" = on for every gate, unset/"" = the image decides."""
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        raise ValueError(f"L4EMU_DIRECT must be 0 or 1, not {value!r}")
    return 2 if value == "1" else 0

