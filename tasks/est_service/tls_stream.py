"""TLS terminated inside est_service, over a byte stream that goes through the network proxy.

est_service has no network of its own: it holds a capability to the network proxy task
(tasks/netproxy), which opens TCP streams to the endpoints the image allows and moves bytes
(CONNECT / SEND / RECV / CLOSE over a shared dataspace). TLS runs *here*, sans-I/O, with
`ssl.SSLContext.wrap_bio` and two `ssl.MemoryBIO`s: the proxy only ever sees ciphertext, and
the TLS client key for re-enrollment never leaves this task.

Layers::

    HttpTransport (http_transport.py, unchanged)      HTTP/1.1 request -> response | EstError
      └─ TlsOverProxy  (socket-like: sendall, makefile, settimeout, close)
           └─ SSLObject + MemoryBIO in / out          TLS records <-> plaintext
                └─ ProxyStream                         CONNECT/SEND/RECV/CLOSE requests
                     └─ transact(bytes) -> bytes       ShmClient.transact: kernel IPC

`TlsOverProxy` looks enough like a socket for `HttpTransport` and `http.client` to drive it, so
the EST exchange runs exactly as in the protocol tests, and failures map to the same
`ErrorKind`s: the exceptions raised here are the ones `HttpTransport` already classifies
(`TimeoutError` -> TIMEOUT, `ssl.SSLError` -> TLS_FAILED, `ConnectionError` ->
CONNECT_FAILED / CONNECTION_CLOSED).

Timeouts: every read is bounded by the socket timeout *and* by a deadline for the whole
connection (``timeout`` from connect to close), so a server that hangs or trickles ends in
TIMEOUT. A proxy RECV waits at most ``slice_ms`` (the proxy is single-threaded and serves other
clients too); between slices ``idle()`` runs, which est_service uses to answer its own clients
while an exchange is in progress.
"""
from __future__ import annotations

import io
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from protocols.netproxy import MAX_IO, Op, Request, Status, decode_response

__all__ = ["ProxyStream", "TlsOverProxy", "proxy_connector"]

Transact = Callable[[bytes], bytes]
_T = TypeVar("_T")


class ProxyStream:
    """One byte stream to ``host:port`` through the network proxy's request/response protocol.

    ``transact`` is `ShmClient.transact` (or anything with its contract); any exception it
    raises (IPC failure, proxy gone) is reported as a `ConnectionError`. ``area`` is the size of
    the shared request/response area, which bounds one SEND or RECV.
    """

    def __init__(self, transact: Transact, *, area: int = MAX_IO + 1, slice_ms: int = 100,
                 idle: Callable[[], None] | None = None) -> None:
        self._transact = transact
        self._io = max(1, min(MAX_IO, area - 1))
        self._slice_ms = max(1, slice_ms)
        self._idle = idle
        self.connected = False
        self.eof = False

    def _call(self, request: Request) -> tuple[Status, bytes]:
        try:
            return decode_response(self._transact(request.encode()))
        except Exception as exc:
            self.connected = False
            raise ConnectionResetError(f"network proxy unreachable: {exc}") from exc

    def connect(self, endpoint: str) -> None:
        status, _ = self._call(Request(Op.CONNECT, endpoint=endpoint))
        if status is Status.DENIED:
            raise ConnectionRefusedError(f"network proxy DENIED {endpoint} (not in the image)")
        if status is not Status.OK:
            raise ConnectionRefusedError(f"network proxy could not connect to {endpoint}: {status.name}")
        self.connected, self.eof = True, False

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            chunk, view = view[:self._io], view[self._io:]
            status, _ = self._call(Request(Op.SEND, data=bytes(chunk)))
            if status is not Status.OK:
                self.connected = False
                raise BrokenPipeError(f"network proxy SEND: {status.name}")

    def recv(self, deadline: float) -> bytes:
        """Some bytes, or b"" at the end of the stream; `TimeoutError` at ``deadline``
        (a `time.monotonic` value)."""
        if self.eof:
            return b""
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise TimeoutError("no data from the server before the deadline")
            status, data = self._call(Request(Op.RECV, max_bytes=self._io,
                                              timeout_ms=min(left_ms, self._slice_ms)))
            if status is Status.OK:
                return data
            if status is Status.CLOSED:
                self.eof, self.connected = True, False
                return b""
            if status is not Status.TIMEOUT:
                self.connected = False
                raise ConnectionResetError(f"network proxy RECV: {status.name}")
            if self._idle is not None:
                self._idle()

    def close(self) -> None:
        if self.connected:
            self.connected = False
            try:
                self._call(Request(Op.CLOSE))
            except ConnectionError:
                pass


class _Reader(io.RawIOBase):
    def __init__(self, tls: TlsOverProxy) -> None:
        self._tls = tls

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._tls.recv(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class TlsOverProxy:
    """A TLS client connection over a `ProxyStream`, shaped like a socket for `HttpTransport`."""

    def __init__(self, stream: ProxyStream, context: ssl.SSLContext, server_hostname: str, *,
                 timeout: float) -> None:
        self._stream = stream
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout  # for the whole connection
        self._closed = False

    # -- the TLS pump ------------------------------------------------------------------
    def _flush(self) -> None:
        pending = self._out.read()
        if pending:
            self._stream.send(pending)

    def _fill(self) -> None:
        deadline = min(self._deadline, time.monotonic() + self._timeout)
        data = self._stream.recv(deadline)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    def _run(self, operation: Callable[[], _T]) -> _T:
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                self._flush()
                if self._in.eof:
                    raise ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "connection closed by the server") from None
                self._fill()
                continue
            self._flush()
            return result

    def handshake(self) -> None:
        self._run(self._tls.do_handshake)

    def recv(self, n: int) -> bytes:
        if self._closed:
            raise OSError("read from a closed TLS connection")
        try:
            return self._run(partial(self._tls.read, max(1, n)))
        except ssl.SSLZeroReturnError:  # close_notify: a clean end of the stream
            return b""

    def sendall(self, data: bytes) -> None:
        if self._closed:
            raise OSError("write to a closed TLS connection")
        view = memoryview(data)
        while view:
            written = self._run(partial(self._tls.write, view))
            view = view[written:]

    # -- what HttpTransport and http.client use ----------------------------------------
    def settimeout(self, timeout: float | None) -> None:
        if timeout is not None and timeout > 0:
            self._timeout = timeout

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        if "w" in mode:
            raise ValueError("TlsOverProxy.makefile supports reading only")
        return io.BufferedReader(_Reader(self))

    def version(self) -> str | None:
        return self._tls.version()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._stream.connected:
            try:
                self._tls.unwrap()  # queue our close_notify; we do not wait for the server's
            except (ssl.SSLError, ValueError):
                pass
            try:
                self._flush()
            except OSError:
                pass
        self._stream.close()

    def __enter__(self) -> TlsOverProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def proxy_connector(transact: Transact, endpoint: str, context: ssl.SSLContext, server_hostname: str,
                    *, timeout: float, area: int = MAX_IO + 1, slice_ms: int = 100,
                    idle: Callable[[], None] | None = None) -> Callable[[], TlsOverProxy]:
    """A ``connect()`` for `HttpTransport`: CONNECT through the proxy, then the TLS handshake."""

    def connect() -> TlsOverProxy:
        stream = ProxyStream(transact, area=area, slice_ms=slice_ms, idle=idle)
        stream.connect(endpoint)
        conn = TlsOverProxy(stream, context, server_hostname, timeout=timeout)
        try:
            conn.handshake()
        except BaseException:
            stream.close()
            raise
        return conn

    return connect
