"""The blocking I/O shell, byte by byte, over a socketpair (no network, no TLS needed).

Each test scripts the server end of a socketpair: what it sends and when it closes. The
TLS path is exercised against the real EST CA in tests/hil/est_ca.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tasks.est_service.http_transport import HttpTransport, run_exchange
from tasks.est_service.messages import EstServer, HttpRequest, HttpResponse
from tasks.est_service.protocol import State, simpleenroll
from tasks.est_service.results import Deferred, Enrolled, ErrorKind, EstError

REQUEST = HttpRequest("POST", "/.well-known/est/simpleenroll",
                      (("Host", "est.example"), ("Connection", "close")), b"MIIB\n")


class Peer:
    """The server side of one connection: records the request, then runs a script."""

    def __init__(self, script: Callable[[socket.socket], None], release: threading.Event):
        self.script = script
        self.release = release
        self.received = b""
        self.thread: threading.Thread | None = None

    def connect(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        self.thread = threading.Thread(target=self._run, args=(theirs,), daemon=True)
        self.thread.start()
        return ours

    def _run(self, sock: socket.socket) -> None:
        with sock:
            while b"\r\n\r\n" not in self.received:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                self.received += chunk
            head, _, body = self.received.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += sock.recv(4096)
            self.received = head + b"\r\n\r\n" + body
            self.script(sock)


@pytest.fixture
def peer() -> Iterator[Callable[..., Peer]]:
    release = threading.Event()
    peers: list[Peer] = []

    def make(script: Callable[[socket.socket], None]) -> Peer:
        peers.append(Peer(script, release))
        return peers[-1]

    yield make
    release.set()
    for p in peers:
        if p.thread is not None:
            p.thread.join(timeout=5)


def sends(data: bytes) -> Callable[[socket.socket], None]:
    return lambda sock: sock.sendall(data)


def test_complete_response_and_request_bytes(peer) -> None:
    p = peer(sends(b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\n"
                   b"Content-Length: 5\r\n\r\nMIIB\n"))
    response = HttpTransport(p.connect, timeout=5).send(REQUEST)
    assert response == HttpResponse(
        200, (("Content-Type", "application/pkcs7-mime"), ("Content-Length", "5")), b"MIIB\n",
        "OK")
    assert p.received == REQUEST.to_wire()


def test_chunked_and_close_delimited_bodies(peer) -> None:
    chunked = peer(sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nMII\r\n2\r\nB\n\r\n0\r\n\r\n"))
    assert HttpTransport(chunked.connect, timeout=5).send(REQUEST).body == b"MIIB\n"
    until_close = peer(sends(b"HTTP/1.0 202 Accepted\r\nRetry-After: 3\r\n\r\npending"))
    response = HttpTransport(until_close.connect, timeout=5).send(REQUEST)
    assert (response.status, response.header("retry-after"), response.body) == (
        202, "3", b"pending")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", ErrorKind.CONNECTION_CLOSED),                                        # no answer
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nMIIB", ErrorKind.CONNECTION_CLOSED),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nMIIB",
         ErrorKind.CONNECTION_CLOSED),
        (b"SSH-2.0-OpenSSH_9.2\r\n", ErrorKind.MALFORMED_HTTP),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + b"A" * 500,
         ErrorKind.RESPONSE_TOO_LARGE),
    ],
    ids=["closed-before-status", "closed-mid-body", "closed-mid-chunk", "not-http", "too-large"],
)
def test_broken_answers_are_typed_errors(peer, data: bytes, kind: ErrorKind) -> None:
    p = peer(sends(data))
    result = HttpTransport(p.connect, timeout=5, max_response_bytes=100).send(REQUEST)
    assert isinstance(result, EstError) and result.kind is kind, result


def test_hanging_server_times_out(peer) -> None:
    p: Any  # the handler below waits on the peer it is given to
    p = peer(lambda sock: p.release.wait(30))  # reads the request, then says nothing
    result = HttpTransport(p.connect, timeout=0.3).send(REQUEST)
    assert isinstance(result, EstError) and result.kind is ErrorKind.TIMEOUT
    assert "waiting for the response" in result.detail


def test_hang_after_headers_times_out(peer) -> None:
    def script(sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nMII")
        p.release.wait(30)

    p = peer(script)
    result = HttpTransport(p.connect, timeout=0.3).send(REQUEST)
    assert isinstance(result, EstError) and result.kind is ErrorKind.TIMEOUT
    assert "body" in result.detail


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(111, "Connection refused"), ErrorKind.CONNECT_FAILED),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), ErrorKind.TLS_FAILED),
        (TimeoutError("timed out"), ErrorKind.TIMEOUT),
    ],
)
def test_connect_failures(exc: Exception, kind: ErrorKind) -> None:
    def connect() -> socket.socket:
        raise exc

    result = HttpTransport(connect).send(REQUEST)
    assert isinstance(result, EstError) and result.kind is kind


def test_run_exchange_waits_out_deferrals_with_injected_sleep(golden, now) -> None:
    exchange = simpleenroll(EstServer("est.example"), golden.trust, golden.csr)
    answers = [
        HttpResponse(202, (("Retry-After", "7"),)),
        HttpResponse(202, (("Retry-After", "Mon, 01 Dec 2025 12:01:00 GMT"),)),
        HttpResponse(200, (("Content-Type", "application/pkcs7-mime"),),
                     golden.bytes("enroll.b64")),
    ]
    clock = [now]
    sent: list[HttpRequest] = []
    slept: list[float] = []

    def send(request: HttpRequest) -> HttpResponse:
        sent.append(request)
        return answers.pop(0)

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += dt.timedelta(seconds=seconds)

    outcome = run_exchange(exchange, send, clock=lambda: clock[0], sleep=sleep)
    assert isinstance(outcome, Enrolled)
    assert slept == [7.0, 53.0]  # 12:00:07 -> 12:01:00
    assert len(sent) == 3 and len(set(sent)) == 1  # the same request every time


def test_run_exchange_records_transport_failure(golden, now) -> None:
    exchange = simpleenroll(EstServer("est.example"), golden.trust, golden.csr)
    error = EstError(ErrorKind.CONNECTION_CLOSED, "gone")
    outcome = run_exchange(exchange, lambda request: error, clock=lambda: now,
                           sleep=lambda s: pytest.fail("must not sleep"))
    assert outcome is error and exchange.state is State.FAILED
    assert not isinstance(outcome, Deferred)
