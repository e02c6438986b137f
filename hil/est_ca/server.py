"""The EST server side (RFC 7030) over HTTPS on loopback, backed by an `EstCa`.

Endpoints, each also under one additional path segment (CA label)::

    GET  /.well-known/est/[label/]cacerts         no client authentication (§4.1)
    GET  /.well-known/est/[label/]csrattrs        204 unless attributes are configured (§4.5)
    POST /.well-known/est/[label/]simpleenroll    HTTP Basic (a client certificate does not
                                                  replace it); subject/SAN within the policy
    POST /.well-known/est/[label/]simplereenroll  the CA's current device certificate as TLS
                                                  client certificate; the new certificate gets
                                                  its Subject and SAN exactly (§3.3.2, §4.2.2)

Status codes: 400 bad CSR / identity change / name outside the policy / PEM armour / wrong
tls-unique, 401 + WWW-Authenticate for missing or wrong Basic credentials, 403 re-enrollment
without a current device certificate, 404 unknown path or label, 405 wrong method, 411/413
body length, 415 wrong Content-Type, 202 + Retry-After in deferred mode. Errors carry a
one-line text/plain explanation.

Proof of possession (§3.5): a CSR carrying a challengePassword over TLS 1.2 must carry the
base64 of this session's tls-unique, or it is refused (400). Over TLS 1.3 tls-unique is
undefined (RFC 9266); the value is then not checked, and the log line says so.

Every request produces exactly one record in `RunningServer.records` and the same line on the
``l4emu.est_ca`` logger: method, path, client identity, status, outcome. It is written before
the answer is sent, so a client that has its answer finds the record; if sending then fails,
a second log line says so.

Faults (`Fault`) make the server misbehave on purpose, so clients can be tested against
hangs, truncated answers, garbage and certificates that do not chain.

TLS (`tls.py`, pyOpenSSL): the server presents its serverAuth certificate and the issuing CA;
it *asks* for a client certificate and accepts any in the handshake -- one that is not a
current device certificate of this CA is "no client identity", never a handshake abort.
Handshakes run in the per-connection thread, so a stalled client cannot block the accept loop.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import email.utils
import hashlib
import hmac
import io
import logging
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7
from cryptography.x509.oid import AttributeOID
from OpenSSL import SSL

from protocols.csrattrs import (
    OID_EC_PUBLIC_KEY,
    OID_ECDSA_WITH_SHA256,
    OID_SECP256R1,
    CsrAttribute,
    CsrAttrs,
    encode_csrattrs,
    encode_oid,
)

from .authority import EstCa, EstCaError, Refused
from .identity import ClientIdentity, identity_matches, parse_basic
from .tls import TlsConnection  # the type only; pyOpenSSL is imported when a server starts

__all__ = ["DEFAULT_CSRATTRS", "Fault", "RequestRecord", "ServerOptions", "make_server"]

log = logging.getLogger("l4emu.est_ca")

PREFIX = "/.well-known/est/"
# Ask for a P-256 key signed with ECDSA-SHA256. challengePassword (tls-unique proof of
# possession, §3.5) is deliberately not requested: curl cannot do it, TLS 1.3 has no tls-unique.
DEFAULT_CSRATTRS = CsrAttrs((
    CsrAttribute(OID_EC_PUBLIC_KEY, (encode_oid(OID_SECP256R1),)),
    OID_ECDSA_WITH_SHA256,
))


class Fault(IntEnum):
    """Deliberate misbehaviour, switchable at run time (`RunningServer.update`)."""

    NONE = 0
    HANG = 1
    """Read the request, then never answer (until the server stops or ``hang_limit``)."""
    CLOSE_MID_RESPONSE = 2
    """Announce the full Content-Length, send half the body, close the connection."""
    MALFORMED_PKCS7 = 3
    """200 with valid base64 that is not PKCS#7 (cacerts and enroll)."""
    WRONG_CONTENT_TYPE = 4
    """200 labelled text/html (cacerts and enroll)."""
    PEM_ARMOUR = 5
    """200 whose body is PEM-armoured PKCS#7 (cacerts and enroll)."""
    ROGUE_ISSUER = 6
    """Enroll answers carry a certificate signed by a throwaway CA (does not chain)."""


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How the EST server behaves. ``basic_auth=None`` lets anyone enroll (first time)."""

    basic_auth: tuple[str, str] | None = ("estuser", "estpwd")
    defer: int = 0
    retry_after: int = 1
    retry_after_http_date: bool = False
    labels: frozenset[str] | None = None
    csrattrs: CsrAttrs | None = DEFAULT_CSRATTRS
    validity: dt.timedelta | None = None
    fault: Fault = Fault.NONE
    request_timeout: float = 10.0
    max_request_bytes: int = 64 * 1024
    hang_limit: float = 60.0
    realm: str = "l4emu EST"
    basic_paths: frozenset[str] = frozenset({"simpleenroll"})
    """Operations that need HTTP Basic (401 + WWW-Authenticate otherwise) when ``basic_auth``
    is set; on /simplereenroll it is asked for in addition to the device certificate."""
    redirect_label: str | None = None
    """Answer requests without a CA label with 307 to the same operation under this label (a
    same-origin redirect, as a load balancer or a CA moved behind a label would send)."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One handled request, as logged."""

    method: str
    path: str
    peer: str
    client: str
    status: int
    outcome: str

    def line(self) -> str:
        """The log line; client-controlled text is escaped so it cannot forge lines."""
        return (f"{_safe(self.method)} {_safe(self.path)} peer={self.peer} "
                f"client={_safe(self.client)} -> {self.status} {_safe(self.outcome)}")


def _safe(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


@dataclass(slots=True)
class _Reply:
    status: int
    outcome: str
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    pkcs7: bool = False  # a certs-only answer (faults may rewrite it)


def _b64(der: bytes) -> bytes:
    flat = base64.b64encode(der)
    return b"".join(flat[i:i + 64] + b"\n" for i in range(0, len(flat), 64))


def _text(status: int, message: str, outcome: str | None = None) -> _Reply:
    return _Reply(status, outcome or message, (message + "\n").encode("utf-8"))


def _certs_reply(certs: list[x509.Certificate], outcome: str) -> _Reply:
    body = _b64(pkcs7.serialize_certificates(certs, Encoding.DER))
    return _Reply(200, outcome, body, "application/pkcs7-mime; smime-type=certs-only",
                  [("Content-Transfer-Encoding", "base64")], pkcs7=True)


class _EstHttpServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, ca: EstCa,
                 options: ServerOptions, context: SSL.Context) -> None:
        self.address_family = family
        self.ca = ca
        self.options = options
        self.tls = context
        self.stopping = threading.Event()
        # Connections are numbered as they are accepted; `release_hung` ends (or prevents) the
        # HANG of every connection up to ``released`` and waits until those are recorded.
        self.changed = threading.Condition()
        self.accepted = 0
        self.released = 0
        self.inflight: set[int] = set()
        self.lock = threading.Lock()
        self.deferrals: dict[bytes, int] = {}
        self.records: deque[RequestRecord] = deque(maxlen=10_000)
        super().__init__(address, _Handler)

    def finish_request(self, request, client_address) -> None:
        """Runs in the connection's thread: TLS handshake first, then HTTP."""
        with self.changed:
            self.accepted += 1
            seq = self.accepted
            self.inflight.add(seq)
        try:
            self._serve_connection(request, client_address, seq)
        finally:
            with self.changed:
                self.inflight.discard(seq)
                self.changed.notify_all()

    def _serve_connection(self, request, client_address, seq: int) -> None:
        tls = TlsConnection(self.tls, request, self.options.request_timeout)
        tls.seq = seq
        try:
            try:
                tls.handshake()
            except OSError as exc:
                log.info("TLS handshake with %s:%s failed: %s", *client_address[:2], exc)
                return
            _Handler(tls, client_address, self)  # type: ignore[arg-type]  # TlsConnection stands in for the socket
        finally:
            tls.close()

    def record(self, record: RequestRecord) -> None:
        self.records.append(record)
        log.info("%s", record.line())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _EstHttpServer
    connection: TlsConnection
    options: ServerOptions

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BufferedReader(_Reader(self.request), 8192)
        self.wfile = _Writer(self.request)  # type: ignore[assignment]  # unbuffered: every write goes out

    def log_message(self, format: str, *args: object) -> None:
        """Silence http.server's own access log: `_EstHttpServer.record` replaces it."""

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _dispatch(self) -> None:
        self.close_connection = True
        self.options = self.server.options  # one consistent snapshot per request
        identity = self._identity()
        fault = self.options.fault
        recorded = False

        def record(reply: _Reply) -> None:
            # Recorded (and logged) *before* the answer goes out: whoever got the answer finds
            # its record already there (tests read `records` right after a request).
            nonlocal recorded
            recorded = True
            peer = f"{self.client_address[0]}:{self.client_address[1]}"
            self.server.record(RequestRecord(self.command, self.path, peer, identity.describe(),
                                             reply.status, reply.outcome))

        try:
            reply = self._route(identity)
            if fault is Fault.HANG:
                self._hang(record)
                return
            if reply.pkcs7:
                reply = self._rewrite(reply, fault)
            truncate = bool(reply.status) and fault is Fault.CLOSE_MID_RESPONSE
            if truncate:
                reply.outcome += " (fault CLOSE_MID_RESPONSE: body cut in half)"
            record(reply)
            if reply.status:
                self._send(reply, truncate=truncate)
        except OSError as exc:  # the client went away (or timed out) mid-request
            if recorded:
                log.info("connection lost while answering %s %s: %s", _safe(self.command),
                         _safe(self.path), exc)
            else:
                record(_Reply(0, f"connection lost: {exc}"))
        except Exception as exc:  # a bug here must still produce a log line and an answer
            log.exception("internal error handling %s %s", self.command, self.path)
            reply = _text(500, f"internal error: {type(exc).__name__}")
            record(reply)
            with contextlib.suppress(OSError):
                self._send(reply, truncate=False)

    def _hang(self, record) -> None:
        server, seq = self.server, self.connection.seq
        with server.changed:
            server.changed.wait_for(lambda: server.released >= seq or server.stopping.is_set(),
                                    timeout=self.options.hang_limit)
        record(_Reply(0, "hung up without answering (fault HANG)"))

    def _send(self, reply: _Reply, *, truncate: bool) -> None:
        self.send_response(reply.status)
        if reply.status != 204:
            self.send_header("Content-Type", reply.content_type)
        for key, value in reply.headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if truncate:
            self.wfile.write(reply.body[: len(reply.body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _rewrite(self, reply: _Reply, fault: Fault) -> _Reply:
        if fault is Fault.MALFORMED_PKCS7:
            return _Reply(200, reply.outcome + " (fault MALFORMED_PKCS7)",
                          _b64(b"\x30\x03\x02\x01\x07 this is not PKCS#7"),
                          reply.content_type, reply.headers)
        if fault is Fault.WRONG_CONTENT_TYPE:
            return _Reply(200, reply.outcome + " (fault WRONG_CONTENT_TYPE)", reply.body,
                          "text/html", reply.headers)
        if fault is Fault.PEM_ARMOUR:
            body = b"-----BEGIN PKCS7-----\n" + reply.body + b"-----END PKCS7-----\n"
            return _Reply(200, reply.outcome + " (fault PEM_ARMOUR)", body, reply.content_type,
                          reply.headers)
        return reply

    def _identity(self) -> ClientIdentity:
        basic = parse_basic(self.headers.get("Authorization"))
        presented = self.connection.peer_certificate()
        if presented is None:
            return ClientIdentity(None, basic)
        device = self.server.ca.device_identity(presented)
        if isinstance(device, str):
            subject = presented.subject.rfc4514_string() or "<empty subject>"
            return ClientIdentity(None, basic, f"{subject}: {device}")
        return ClientIdentity(device, basic)

    def _route(self, identity: ClientIdentity) -> _Reply:
        path = urlsplit(self.path).path
        if not path.startswith(PREFIX):
            return _text(404, f"not an EST path (expected {PREFIX}...)")
        segments = path[len(PREFIX):].split("/")
        if len(segments) not in (1, 2) or not all(segments):
            return _text(404, "unknown EST path")
        label, operation = (None, segments[0]) if len(segments) == 1 else segments
        labels = self.options.labels
        if label is not None and labels is not None and label not in labels:
            return _text(404, f"unknown CA label {label!r}")
        routes = {
            "cacerts": ("GET", self._cacerts),
            "csrattrs": ("GET", self._csrattrs),
            "simpleenroll": ("POST", self._simpleenroll),
            "simplereenroll": ("POST", self._simplereenroll),
        }
        if operation not in routes:
            return _text(404, f"unknown EST operation {operation!r}")
        if label is None and self.options.redirect_label is not None:
            reply = _Reply(307, f"redirected to label {self.options.redirect_label}")
            reply.headers.append(("Location", f"{PREFIX}{self.options.redirect_label}/{operation}"))
            return reply
        method, handler = routes[operation]
        if self.command != method and not (method == "GET" and self.command == "HEAD"):
            reply = _text(405, f"{operation} takes {method}")
            reply.headers.append(("Allow", method))
            return reply
        if operation in self.options.basic_paths:
            refused = self._basic(identity)
            if refused is not None:
                return refused
        return handler(identity)

    def _basic(self, identity: ClientIdentity) -> _Reply | None:
        """None if HTTP Basic is satisfied (or not configured), else the 401."""
        creds = self.options.basic_auth
        if creds is None:
            return None
        if identity.basic is not None and _same_credentials(identity.basic, creds):
            return None
        # a client certificate never stands in for the credentials
        reply = _text(401, "authentication required: HTTP Basic",
                      "wrong credentials" if identity.basic else "no credentials")
        reply.headers.append(("WWW-Authenticate", f'Basic realm="{self.options.realm}"'))
        return reply

    def _cacerts(self, identity: ClientIdentity) -> _Reply:
        certs = self.server.ca.ca_certificates
        return _certs_reply(certs, f"sent {len(certs)} CA certificates (issuing CA "
                                   f"{certs[0].subject.rfc4514_string()})")

    def _csrattrs(self, identity: ClientIdentity) -> _Reply:
        attrs = self.options.csrattrs
        if attrs is None:
            return _Reply(204, "no CSR attributes")
        return _Reply(200, "sent CSR attributes", _b64(encode_csrattrs(attrs)),
                      "application/csrattrs", [("Content-Transfer-Encoding", "base64")])

    def _simpleenroll(self, identity: ClientIdentity) -> _Reply:
        csr = self._read_csr()
        return csr if isinstance(csr, _Reply) else self._enroll(csr)

    def _simplereenroll(self, identity: ClientIdentity) -> _Reply:
        current = identity.certificate
        if current is None:
            why = f" ({identity.rejected})" if identity.rejected else ""
            return _text(403, "re-enrollment requires this CA's current device certificate as "
                              f"TLS client certificate (RFC 7030 §3.3.2){why}",
                         f"no client identity{why}")
        csr = self._read_csr()
        if isinstance(csr, _Reply):
            return csr
        if not identity_matches(csr, current):
            return _text(400, "re-enrollment must keep the Subject and SubjectAltName of the "
                              "current certificate (RFC 7030 §4.2.2)", "identity changed")
        return self._enroll(csr, current)

    def _read_csr(self) -> x509.CertificateSigningRequest | _Reply:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return _text(411, "Content-Length required")
        if int(length) > self.options.max_request_bytes:
            return _text(413, f"request body over {self.options.max_request_bytes} bytes")
        body = self.rfile.read(int(length))
        media = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media != "application/pkcs10":
            return _text(415, f"expected Content-Type application/pkcs10, got {media or 'none'}")
        if b"-----BEGIN" in body:
            return _text(400, "PEM armour is not allowed: send base64 of the DER CSR "
                              "(RFC 7030 §3.2.4)", "PEM-armoured CSR")
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
            return x509.load_der_x509_csr(der)
        except (binascii.Error, ValueError) as exc:
            return _text(400, f"body is not a base64 DER PKCS#10 request: {exc}", "bad CSR")

    def _proof_of_possession(self, csr: x509.CertificateSigningRequest) -> _Reply | str:
        """RFC 7030 §3.5: a challengePassword must be this TLS session's tls-unique (base64)."""
        try:
            attribute = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD)
        except x509.AttributeNotFound:
            return ""
        unique = self.connection.tls_unique()
        if unique is None:
            return f" (challengePassword not checked: tls-unique is undefined for " \
                   f"{self.connection.version})"
        expected = base64.b64encode(unique)
        given = attribute.value if isinstance(attribute.value, bytes) else bytes(attribute.value)
        if not hmac.compare_digest(given.strip(), expected):
            return _text(400, "the CSR's challengePassword is not this TLS session's tls-unique "
                              "(RFC 7030 §3.5 proof of possession)", "tls-unique mismatch")
        return " (tls-unique verified)"

    def _enroll(self, csr: x509.CertificateSigningRequest,
                current: x509.Certificate | None = None) -> _Reply:
        server, options = self.server, self.options
        pop = self._proof_of_possession(csr)
        if isinstance(pop, _Reply):
            return pop
        spki = csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        key_id = hashlib.sha256(spki).digest()
        with server.lock:
            seen = server.deferrals.get(key_id, 0)
            if seen < options.defer:
                server.deferrals[key_id] = seen + 1
                return self._deferred(seen + 1)
            server.deferrals.pop(key_id, None)
        if options.fault is Fault.ROGUE_ISSUER:
            issued = server.ca.issue_from_rogue_ca(csr)
        elif current is not None:
            issued = server.ca.reissue(csr, current, validity=options.validity)
        else:
            issued = server.ca.issue(csr, validity=options.validity)
        if isinstance(issued, Refused):
            return _text(400, f"CSR refused: {issued.reason}")
        # RFC 7030 §4.2.3: the answer holds only the issued certificate (/cacerts has the rest).
        return _certs_reply([issued], f"issued serial={issued.serial_number:x} "
                                      f"subject={issued.subject.rfc4514_string()}{pop}")

    def _deferred(self, count: int) -> _Reply:
        options = self.options
        if options.retry_after_http_date:
            when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=options.retry_after)
            value = email.utils.format_datetime(when, usegmt=True)
        else:
            value = str(options.retry_after)
        reply = _text(202, f"request accepted, try again after {value}",
                      f"deferred {count}/{options.defer}")
        reply.headers.append(("Retry-After", value))
        return reply


def _same_credentials(given: tuple[str, str], expected: tuple[str, str]) -> bool:
    user_ok = hmac.compare_digest(given[0].encode(), expected[0].encode())
    password_ok = hmac.compare_digest(given[1].encode(), expected[1].encode())
    return user_ok and password_ok


class _Reader(io.RawIOBase):
    def __init__(self, conn: TlsConnection) -> None:
        self._conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._conn.recv_into(buffer, len(buffer))


class _Writer(io.RawIOBase):
    def __init__(self, conn: TlsConnection) -> None:
        self._conn = conn

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._conn.sendall(bytes(data))
        return len(data)


def make_server(ca: EstCa, address: tuple[str, int], family: socket.AddressFamily,
                options: ServerOptions) -> _EstHttpServer:
    """Bind (not yet serve) an EST server; `serving.serve` is the public entry point."""
    from .tls import make_context

    cert_path, key_path = ca.server_credentials(extra_hosts=[address[0]])
    try:
        context = make_context(cert_path, key_path, ca.certificate)
    except ImportError as exc:  # pyOpenSSL is the `est-ca` extra (./bootstrap.sh installs it)
        raise EstCaError(f"the development EST CA needs pyOpenSSL ({exc}): "
                         "pip install -e '.[est-ca]' or run ./bootstrap.sh") from None
    return _EstHttpServer(address, family, ca, options, context)
