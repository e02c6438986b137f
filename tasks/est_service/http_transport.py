"""A small blocking I/O shell for the EST protocol core: for tests and development only.

The est_service task itself has no network: it reaches the EST server through a capability
to the network proxy task. This module is what a developer (or a test) uses instead: it writes
`HttpRequest.to_wire()` to an already-connected TLS stream and parses the answer with
`http.client`. Every failure comes back as an `EstError` with a transport kind
(`ErrorKind.CONNECT_FAILED` … `ErrorKind.RESPONSE_TOO_LARGE`); nothing is raised.

Timeouts: ``timeout`` bounds each socket operation *and* the whole exchange (checked between
reads), so a server that hangs, or trickles one byte at a time, ends in `ErrorKind.TIMEOUT`.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import secrets
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
)

from .messages import BasicAuth, HttpRequest, HttpResponse
from .protocol import Exchange
from .results import AuthRequired, Deferred, ErrorKind, EstError, Outcome, Redirected

__all__ = ["HttpTransport", "make_ssl_context", "run_exchange"]

Connect = Callable[[], socket.socket]
Send = Callable[[HttpRequest], "HttpResponse | EstError"]
_CHUNK = 64 * 1024


def make_ssl_context(
    trust_anchors: Sequence[x509.Certificate],
    *,
    client_cert: x509.Certificate | None = None,
    client_key: ec.EllipticCurvePrivateKey | None = None,
    client_chain: Sequence[x509.Certificate] = (),
) -> ssl.SSLContext:
    """A TLS client context that trusts only ``trust_anchors`` (never the system store).

    With ``client_cert``/``client_key`` it presents that certificate, as re-enrollment needs
    (RFC 7030 §3.3.2). `ssl` loads client keys only from files, so the key is written,
    encrypted under a one-time password, to a private temporary directory and removed at once.
    """
    if not trust_anchors:
        raise ValueError("make_ssl_context needs at least one trust anchor")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(
        cadata="".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in trust_anchors)
    )
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together")
    if client_cert is not None and client_key is not None:
        password = secrets.token_hex(16).encode("ascii")
        with tempfile.TemporaryDirectory(prefix="l4emu-est-") as tmp:
            cert_path = os.path.join(tmp, "client.crt")
            key_path = os.path.join(tmp, "client.key")
            with open(cert_path, "wb") as f:
                for cert in (client_cert, *client_chain):
                    f.write(cert.public_bytes(Encoding.PEM))
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(client_key.private_bytes(
                    Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(password)))
            context.load_cert_chain(cert_path, key_path, password=password)
    return context


class HttpTransport:
    """Sends one `HttpRequest` per connection and returns the `HttpResponse` or an `EstError`."""

    def __init__(self, connect: Connect, *, timeout: float = 10.0,
                 max_response_bytes: int = 1 << 20) -> None:
        """``connect()`` returns a connected, TLS-wrapped stream socket (it may raise OSError)."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._connect = connect
        self._timeout = timeout
        self._max = max_response_bytes

    @classmethod
    def tls(cls, host: str, port: int, context: ssl.SSLContext, *,
            server_hostname: str | None = None, timeout: float = 10.0,
            max_response_bytes: int = 1 << 20) -> HttpTransport:
        """A transport that opens a new TLS connection to ``host:port`` for each request."""

        def connect() -> socket.socket:
            raw = socket.create_connection((host, port), timeout=timeout)
            try:
                return context.wrap_socket(raw, server_hostname=server_hostname or host)
            except BaseException:
                raw.close()
                raise

        return cls(connect, timeout=timeout, max_response_bytes=max_response_bytes)

    def send(self, request: HttpRequest) -> HttpResponse | EstError:
        deadline = time.monotonic() + self._timeout
        try:
            sock = self._connect()
        except TimeoutError:
            return EstError(ErrorKind.TIMEOUT, f"connect/TLS handshake took over {self._timeout}s")
        except ssl.SSLError as exc:
            return EstError(ErrorKind.TLS_FAILED, f"TLS handshake failed: {exc}")
        except OSError as exc:
            return EstError(ErrorKind.CONNECT_FAILED, f"cannot connect: {exc}")
        with sock:
            sock.settimeout(self._timeout)
            return self._exchange(sock, request, deadline)

    def _exchange(self, sock: socket.socket, request: HttpRequest,
                  deadline: float) -> HttpResponse | EstError:
        phase = "sending the request"
        try:
            sock.sendall(request.to_wire())
            phase = "waiting for the response"
            response = http.client.HTTPResponse(sock, method=request.method)
            response.begin()
            phase = "reading the response body"
            body = bytearray()
            while chunk := response.read1(_CHUNK):
                body += chunk
                if len(body) > self._max:
                    return EstError(ErrorKind.RESPONSE_TOO_LARGE,
                                    f"response body exceeds {self._max} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError
            if response.length:  # Content-Length promised more than arrived
                raise http.client.IncompleteRead(bytes(body), response.length)
        except TimeoutError:
            return EstError(ErrorKind.TIMEOUT, f"no complete answer within {self._timeout}s "
                            f"while {phase}")
        except (http.client.RemoteDisconnected, http.client.IncompleteRead,
                ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as exc:
            return EstError(ErrorKind.CONNECTION_CLOSED,
                            f"connection closed while {phase}: {type(exc).__name__}")
        except ssl.SSLError as exc:  # e.g. TLS 1.3 alert: the server refused our certificate
            return EstError(ErrorKind.TLS_FAILED, f"TLS error while {phase}: {exc}")
        except http.client.HTTPException as exc:
            return EstError(ErrorKind.MALFORMED_HTTP, f"not an HTTP response: {exc!r}")
        except OSError as exc:
            return EstError(ErrorKind.CONNECTION_CLOSED, f"I/O error while {phase}: {exc}")
        return HttpResponse(
            status=response.status,
            headers=tuple(response.getheaders()),
            body=bytes(body),
            reason=response.reason,
        )


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def run_exchange(
    exchange: Exchange,
    send: HttpTransport | Send,
    *,
    clock: Callable[[], dt.datetime] = _utc_now,
    sleep: Callable[[float], None] = time.sleep,
    auth: BasicAuth | None = None,
) -> Outcome:
    """Drive ``exchange`` to its final outcome, waiting out each `Deferred` with ``sleep``,
    following same-origin redirects, and answering a 401 once with ``auth`` if given.

    ``clock`` and ``sleep`` are injectable so tests run deferrals without waiting.
    """
    sender = send.send if isinstance(send, HttpTransport) else send
    request = exchange.request
    while True:
        response = sender(request)
        if isinstance(response, EstError):
            return exchange.fail(response)
        outcome = exchange.receive(response, clock())
        if isinstance(outcome, Redirected):
            request = exchange.resend()
            continue
        if isinstance(outcome, AuthRequired) and auth is not None and not outcome.credentials_sent:
            request = exchange.authenticate(auth)
            continue
        if not isinstance(outcome, Deferred):
            return outcome
        sleep(max(0.0, (outcome.not_before - clock()).total_seconds()))
        request = exchange.resend()
