"""The task's one way out: its SOCK_SEQPACKET channel to the kernel (fd 3).

``KernelChannel.ipc(inv)`` sends one invocation and blocks until the kernel's
result arrives, passing memory fds to the region manager and applying any
``Revoke`` notices that arrive meanwhile. It is the only code in a task that
touches the channel. Frames the kernel sends unasked (``Revoke``, ``Remap``, a direct
channel's end ``DirectEnd``, the doorbell ``Doorbell``) are handled wherever they arrive:
inside ``ipc`` or, for a server idling in ``poll`` over its direct ends, in ``drain``.
"""
from __future__ import annotations

import array
import os
import socket
from collections.abc import Callable

from kernel_model.abi import CHANNEL_FD, MAX_FRAME
from kernel_model.wire import (
    Boot,
    DirectEnd,
    Doorbell,
    Invocation,
    Remap,
    Result,
    Revoke,
    WireError,
    decode_kernel_frame,
)

MAX_FDS = 32


class ChannelClosed(Exception):
    """The kernel is gone: nothing a task can do but exit."""


class KernelChannel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.on_revoke: Callable[[Revoke], None] | None = None
        self.on_remap: Callable[[Remap, int], None] | None = None
        self.on_direct: Callable[[DirectEnd, int], None] | None = None  #: a direct end (the fd) arrived
        self.on_pending: Callable[[], None] | None = None  #: the doorbell rang

    @classmethod
    def inherited(cls, fd: int = CHANNEL_FD) -> KernelChannel:
        return cls(socket.socket(fileno=fd))

    def _recv(self, flags: int = 0) -> tuple[object, list[int]]:
        fds = array.array("i")
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(MAX_FRAME, socket.CMSG_SPACE(MAX_FDS * fds.itemsize), flags)
        except BlockingIOError:
            raise
        except (ConnectionError, OSError) as exc:
            raise ChannelClosed(str(exc)) from None
        if not data:
            raise ChannelClosed("kernel closed the channel")
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        return decode_kernel_frame(data), list(fds)

    def boot(self) -> tuple[Boot, list[int]]:
        """The boot record and the fds of the boot memory it describes (root tasks only)."""
        frame, fds = self._recv()
        if not isinstance(frame, Boot):
            for fd in fds:
                os.close(fd)
            raise ChannelClosed("first frame from the kernel was not the boot record")
        return frame, fds

    def ipc(self, inv: Invocation) -> tuple[Result, list[int]]:
        try:
            self.sock.send(inv.encode())
        except (ConnectionError, OSError) as exc:
            raise ChannelClosed(str(exc)) from None
        while True:
            frame, fds = self._recv()
            if isinstance(frame, Result):
                return frame, fds
            self._unasked(frame, fds)

    def drain(self) -> None:
        """Handle every frame waiting on the channel without blocking (a server idling in ``poll``): only
        unasked frames can be there; anything else is dropped."""
        while True:
            try:
                frame, fds = self._recv(socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except WireError:
                continue
            self._unasked(frame, fds)

    def _unasked(self, frame: object, fds: list[int]) -> None:
        if isinstance(frame, Revoke) and self.on_revoke is not None:
            self.on_revoke(frame)
        elif isinstance(frame, Remap) and self.on_remap is not None and fds:
            self.on_remap(frame, fds.pop(0))
        elif isinstance(frame, DirectEnd) and self.on_direct is not None and fds:
            self.on_direct(frame, fds.pop(0))
        elif isinstance(frame, Doorbell) and self.on_pending is not None:
            self.on_pending()
        for fd in fds:
            os.close(fd)
