"""The task's side of kernel-granted direct channels (``kernel_model.direct``; docs/direct-channels.md).

The kernel hands a client and a server the two ends of a socket pair once it has checked the path
(client selector -> gate -> bound server) on a call. Afterwards a plain call on that selector (no
typed items, no receive windows, a payload that fits the message registers, no zero timeout) is
one write and one read on the client's end; the server reads the request from its end with the
label the kernel bound to that end, and writes the reply back there.

Frames (little-endian; both sides treat what they read as attacker-written and decode it totally)::

  request  q proto (the tag label) | H words | H tag flags (0x3000 bits only)  then data (<= MR_BYTES)
  reply    q status (the tag label) | H words | H IPC error (0, or REMSGCUT)      then data (<= MR_BYTES)

``words`` must be ``len(data) // 8``. A malformed frame closes that channel (shutdown, so the peer
sees it at once); fds a peer smuggles along are discarded by the OS (no ancillary buffer on recv).
Errors on the way out fall back to the kernel: a send that fails (the kernel cut the channel, the
peer is gone) drops the end and the same call goes through the kernel, which gives exactly the
error and the violation event it always gives. A reply that never comes within the receive
timeout is ``RETIMEOUT`` and drops the end (a late reply must never answer the next call); the
end closing while a reply is awaited ends the call with ``ENOT_EXISTENT``, as a call whose
partner died.
"""
from __future__ import annotations

import select
import socket
import struct
from collections.abc import Callable
from typing import Any

from kernel_model.abi import MR_BYTES, IpcError, MsgTag

_HEAD = struct.Struct("<qHH")
HEAD = _HEAD.size  #: 12
MAX_FRAME = HEAD + MR_BYTES
RECV_SIZE = MAX_FRAME + 1  #: one byte more than the largest frame: an oversized one is seen as such
_LABEL_MIN, _LABEL_MAX = -(1 << 47), (1 << 47) - 1
_ERRORS = frozenset(int(e) for e in IpcError)
_pack_into = _HEAD.pack_into
_unpack_from = _HEAD.unpack_from
_DONTWAIT = socket.MSG_DONTWAIT
POLLIN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
KERNEL = object()  #: ``next_request``: the kernel channel is readable
_OK = IpcError.OK
_TAGS: dict[tuple[int, int, int], MsgTag] = {}  #: message tags seen, reused (no object per message)


def tag(label: int, words: int, flags: int = 0) -> MsgTag:
    key = (label, words, flags)
    t = _TAGS.get(key)
    if t is None:
        if len(_TAGS) > 4096:
            _TAGS.clear()
        t = _TAGS[key] = MsgTag(label, words, 0, flags)
    return t


def encode(label: int, words: int, third: int, data: bytes) -> bytes:
    """A request (third = tag flags) or a reply (third = IPC error)."""
    return _HEAD.pack(label, words, third) + data


def decode(frame: bytes, reply: bool) -> tuple[int, int, int, bytes] | None:
    """(label, words, flags-or-error, data), or None for anything malformed."""
    n = len(frame)
    if n < HEAD or n > MAX_FRAME:
        return None
    label, words, third = _unpack_from(frame)
    if not _LABEL_MIN <= label <= _LABEL_MAX or words != (n - HEAD) >> 3:
        return None
    if reply:
        if third not in _ERRORS:
            return None
    elif third & ~0x3000:
        return None
    return label, words, third, frame[HEAD:]


def _close(sock: socket.socket) -> None:
    """Shut down first: the peer sees the end at once (its next send fails, its read ends)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class ClientEnd:
    __slots__ = ("handle", "poller", "recv", "send", "sock")

    def __init__(self, sock: socket.socket, handle: int):
        self.sock = sock
        self.handle = handle
        self.poller: select.poll | None = None
        self.send = sock.send
        self.recv = sock.recv


class ServerEnd:
    __slots__ = ("fd", "handle", "label", "sock")

    def __init__(self, sock: socket.socket, handle: int, label: int):
        self.sock = sock
        self.handle = handle
        self.label = label
        self.fd = sock.fileno()


class Direct:
    """A task's direct ends: as a client (by selector) and as a server (with their kernel-bound labels)."""

    def __init__(self, kernel_fd: int):
        self.kernel_fd = kernel_fd
        self.clients: dict[int, ClientEnd] = {}
        self.servers: list[ServerEnd] = []
        self.by_fd: dict[int, ServerEnd] = {}
        self.poller = select.poll()
        self.poller.register(kernel_fd, POLLIN)
        self.pending = False  #: the kernel rang: a message (or an IRQ, a notice) waits there
        self.reply_end: ServerEnd | None = None  #: the last message came from this end: the reply goes there
        self.rr = 0  #: round robin: the next server end to look at first
        self.active = False  #: any end, or a reply owed on one (``Env.ipc`` looks only at this)
        #: builds the runtime's message value (``env.Msg``) from (error, tag, label, data); set by ``Env``
        self.make_msg: Callable[[IpcError, MsgTag, int, bytes], Any] = lambda *a: a
        self.calls = 0  #: calls that went over a direct channel (the runtime's own count)
        self.served = 0  #: messages served from direct ends
        self.dropped = 0  #: ends dropped (cut, peer gone, malformed, timed out)

    def _update(self) -> None:
        self.active = bool(self.clients or self.servers or self.reply_end is not None)

    # -- ends arrive (the kernel's DirectEnd frames) ------------------------------------------
    def add_client(self, selector: int, handle: int, fd: int) -> None:
        old = self.clients.pop(selector, None)
        if old is not None:
            _close(old.sock)
        self.clients[selector] = ClientEnd(socket.socket(fileno=fd), handle)
        self._update()

    def add_server(self, label: int, handle: int, fd: int) -> None:
        end = ServerEnd(socket.socket(fileno=fd), handle, label)
        end.sock.setblocking(False)
        self.servers.append(end)
        self.by_fd[end.fd] = end
        self.poller.register(end.fd, POLLIN)
        self._update()

    def drop_client(self, selector: int) -> None:
        end = self.clients.pop(selector, None)
        if end is not None:
            _close(end.sock)
            self.dropped += 1
        self._update()

    def drop_server(self, end: ServerEnd) -> None:
        if self.by_fd.pop(end.fd, None) is None:
            return
        self.poller.unregister(end.fd)
        self.servers.remove(end)
        if self.reply_end is end:
            self.reply_end = None
        _close(end.sock)
        self.dropped += 1
        self._update()

    # -- the client's call ----------------------------------------------------------------------
    def call(self, end: ClientEnd, selector: int, proto: int, data: bytes, recv_timeout_us: int | None) -> Any:
        """One call over ``end`` (the end for ``selector``): the reply message, or None: use the kernel."""
        try:
            end.send(_HEAD.pack(proto, len(data) >> 3, 0) + data, _DONTWAIT)
        except OSError:  # cut (EPIPE), the server's end gone, or full (a server that does not read)
            self.drop_client(selector)
            return None  # never delivered: the same call goes through the kernel
        if recv_timeout_us is not None:
            poller = end.poller
            if poller is None:
                poller = end.poller = select.poll()
                poller.register(end.sock.fileno(), POLLIN)
            if not poller.poll(-(-recv_timeout_us // 1000)):
                self.drop_client(selector)  # a late reply must never answer the next call
                return self.make_msg(IpcError.RETIMEOUT, tag(0, 0), 0, b"")
        try:
            frame = end.recv(RECV_SIZE)
        except OSError:
            frame = b""
        n = len(frame)
        if HEAD <= n <= MAX_FRAME:
            status, words, error = _unpack_from(frame)
            if _LABEL_MIN <= status <= _LABEL_MAX and words == (n - HEAD) >> 3 and error in _ERRORS:
                self.calls += 1
                return self.make_msg(IpcError(error) if error else _OK, tag(status, words), 0, frame[HEAD:])
        # EOF (the server died, the kernel cut the channel) or a malformed reply: as a call whose partner died
        self.drop_client(selector)
        return self.make_msg(IpcError.ENOT_EXISTENT, tag(0, 0), 0, b"")

    # -- the server's side ----------------------------------------------------------------------
    def reply(self, end: ServerEnd, status: int, words: int, data: bytes, has_items: bool) -> IpcError:
        """Write the reply to the end the request came from. Typed items cannot travel on a direct channel:
        the caller opened no receive window (else its call went through the kernel), so, as there, the
        caller gets ``REMSGCUT`` and the replier ``SEMSGCUT``."""
        frame = _HEAD.pack(status, words, IpcError.REMSGCUT if has_items else 0) + (b"" if has_items else data)
        try:
            end.sock.send(frame, _DONTWAIT)
        except OSError:  # the caller is gone, the channel cut, or a caller that never reads its replies
            self.drop_server(end)
            return IpcError.ENOT_EXISTENT
        return IpcError.SEMSGCUT if has_items else IpcError.OK

    def next_request(self, timeout_ms: int | None) -> Any:
        """Wait (``poll``) for the next request on a server end: the message, ``KERNEL`` (the kernel channel is
        readable), or None (the timeout passed). Ready ends are taken round robin (one client cannot starve
        the others); ends that closed or sent a malformed frame are dropped on the way."""
        ready = self.poller.poll(timeout_ms)
        if not ready:
            return None
        if len(ready) == 1:
            fd = ready[0][0]
            if fd == self.kernel_fd:
                return KERNEL
            end = self.by_fd.get(fd)
            if end is not None:
                msg = self._read(end)
                if msg is not None:
                    return msg
            return self.next_request(0)
        fds = {fd for fd, _ev in ready}
        servers = self.servers
        n = len(servers)
        for i in range(n):
            idx = (self.rr + i) % n
            if idx >= len(servers):
                break
            end = servers[idx]
            if end.fd in fds:
                msg = self._read(end)
                if msg is not None:
                    self.rr = (idx + 1) % n
                    return msg
        return KERNEL if self.kernel_fd in fds else self.next_request(0)

    def _read(self, end: ServerEnd) -> Any:
        try:
            frame = end.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            frame = b""
        n = len(frame)
        if HEAD <= n <= MAX_FRAME:
            proto, words, flags = _unpack_from(frame)
            if _LABEL_MIN <= proto <= _LABEL_MAX and words == (n - HEAD) >> 3 and not flags & ~0x3000:
                self.served += 1
                self.reply_end = end
                return self.make_msg(_OK, tag(proto, words, flags), end.label, frame[HEAD:])
        self.drop_server(end)  # EOF (the client is gone, or the kernel cut the channel) or malformed
        return None

    def close(self) -> None:
        for selector in list(self.clients):
            self.drop_client(selector)
        for end in list(self.servers):
            self.drop_server(end)
