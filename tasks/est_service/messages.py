"""HTTP requests and responses as plain data, plus the EST server address.

Nothing here performs I/O. The protocol core (`protocol.py`) turns EST operations into
`HttpRequest` values and interprets `HttpResponse` values; whoever owns a connection (the
development shell in `http_transport.py`, or the est_service task talking to the network
proxy task through a capability) moves the bytes.

RFC 7030 §3.2.2: every EST URI is ``https://<authority>/.well-known/est/`` followed by an
optional *additional path segment* (a CA label) and the operation name.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "WELL_KNOWN_PREFIX",
    "BasicAuth",
    "EstServer",
    "HttpRequest",
    "HttpResponse",
    "Operation",
]

WELL_KNOWN_PREFIX = "/.well-known/est"

# RFC 3986 pchar minus "/" (a label is exactly one path segment), without percent-escapes:
# labels are configuration, keep them boring.
_LABEL_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 header field name


class Operation(StrEnum):
    """The EST operations this client implements (RFC 7030 §3.2.2, table 1)."""

    CACERTS = "cacerts"
    """GET the current CA certificates (§4.1)."""
    SIMPLEENROLL = "simpleenroll"
    """POST a PKCS#10 request for a first certificate (§4.2.1)."""
    SIMPLEREENROLL = "simplereenroll"
    """POST a PKCS#10 request renewing the current certificate (§4.2.2)."""
    CSRATTRS = "csrattrs"
    """GET the attributes the CA wants to see in a CSR (§4.5)."""


@dataclass(frozen=True, slots=True)
class EstServer:
    """Where the EST server lives: host, port and optional CA label.

    ``host`` is what goes into the ``Host`` header and (for the TLS shell) what the server
    certificate must name. The label is validated at construction: it is one path segment.
    """

    host: str
    port: int = 443
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.host or any(c in self.host for c in "/ \r\n"):
            raise ValueError(
                f"EstServer.host must be a bare host name or address, got {self.host!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"EstServer.port out of range: {self.port}")
        if self.label is not None and not _LABEL_RE.fullmatch(self.label):
            # RFC 7030 §3.2.2: the additional path segment is a single segment.
            raise ValueError(f"EstServer.label must be one URI path segment, got {self.label!r}")

    def path(self, operation: Operation) -> str:
        """The request target, e.g. ``/.well-known/est/arbitraryLabel1/simpleenroll``."""
        if self.label is None:
            return f"{WELL_KNOWN_PREFIX}/{operation.value}"
        return f"{WELL_KNOWN_PREFIX}/{self.label}/{operation.value}"

    @property
    def authority(self) -> str:
        """The ``Host`` header value: port omitted when it is 443, IPv6 literals bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, repr=False)
class BasicAuth:
    """HTTP Basic credentials for first enrollment (RFC 7030 §3.2.3, RFC 7617).

    Only ever sent over a TLS connection whose server was authenticated against the trust
    anchor. ``repr`` hides the password so it cannot leak into logs.
    """

    username: str
    password: str

    def __post_init__(self) -> None:
        # RFC 7617 §2: the user-id cannot contain a colon.
        if ":" in self.username:
            raise ValueError("BasicAuth.username must not contain ':'")

    def header_value(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=<hidden>)"


Headers = tuple[tuple[str, str], ...]


def _find_header(headers: Headers, name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


def _check_headers(headers: Headers) -> None:
    for key, value in headers:
        if not _TOKEN_RE.fullmatch(key):
            raise ValueError(f"invalid header name {key!r}")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {key!r} contains a line break")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP/1.1 request. Header order is preserved; ``Content-Length`` is derived."""

    method: str
    target: str
    headers: Headers
    body: bytes = b""

    def __post_init__(self) -> None:
        if self.method not in ("GET", "POST"):
            raise ValueError(f"EST uses GET and POST only, got {self.method!r}")
        if not self.target.startswith("/") or any(c in self.target for c in " \r\n"):
            raise ValueError(f"invalid request target {self.target!r}")
        _check_headers(self.headers)
        if _find_header(self.headers, "Content-Length") is not None:
            raise ValueError("Content-Length is derived from the body; do not set it")

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        return _find_header(self.headers, name)

    def to_wire(self) -> bytes:
        """The request as HTTP/1.1 bytes, ready to be written to a (TLS) stream."""
        lines = [f"{self.method} {self.target} HTTP/1.1"]
        lines += [f"{key}: {value}" for key, value in self.headers]
        if self.method == "POST" or self.body:
            lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("latin-1") + self.body


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One HTTP response as received: status, headers in order, and the complete body."""

    status: int
    headers: Headers = ()
    body: bytes = b""
    reason: str = ""

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"HTTP status out of range: {self.status}")

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        return _find_header(self.headers, name)
