"""What an EST exchange can end with: typed results and one closed error vocabulary.

Every failure that crosses the est_service API is an `EstError` value carrying an
`ErrorKind`, never an exception. The kinds fall into two numeric ranges:

* 1..99: the server's answer was unacceptable (protocol, encoding, trust);
* 100..199: the bytes never made it (transport: connect, TLS, timeout, closed mid-response).

The numbers are stable: est_service writes them into its state and log.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

from cryptography import x509

from protocols.csrattrs import CsrAttrs

__all__ = [
    "AuthRequired",
    "CaCerts",
    "CsrAttributes",
    "Deferred",
    "Enrolled",
    "ErrorKind",
    "EstError",
    "Outcome",
    "Redirected",
]


class ErrorKind(IntEnum):
    """Why an EST exchange failed."""

    HTTP_STATUS = 1
    """The server answered with a status the operation does not define (4xx/5xx except 401)."""
    WRONG_CONTENT_TYPE = 2
    """A 200 whose Content-Type is not the one RFC 7030 §3.2.4 prescribes for the operation."""
    PEM_ARMOUR = 3
    """The body is PEM (``-----BEGIN``); EST bodies are bare base64 of DER (RFC 8951 §3)."""
    BAD_BASE64 = 4
    """The body is not base64 (line breaks and other whitespace are tolerated)."""
    MALFORMED_PKCS7 = 5
    """The decoded body is not a CMS SignedData certs-only structure."""
    NO_CERTIFICATES = 6
    """A certs-only response that carries no certificate."""
    UNTRUSTED_CHAIN = 7
    """A certificate does not chain to the explicit (bootstrap) trust anchor."""
    KEY_MISMATCH = 8
    """No returned certificate holds the public key of our CSR."""
    BAD_RETRY_AFTER = 9
    """A 202 without a usable Retry-After (RFC 7030 §4.2.3 makes it mandatory)."""
    TOO_MANY_DEFERRALS = 10
    """The server deferred more often than `DeferralLimits.max_deferrals` allows."""
    MALFORMED_CSRATTRS = 11
    """The /csrattrs body is not a DER ``CsrAttrs`` sequence (RFC 7030 §4.5.2)."""

    CONNECT_FAILED = 100
    """The TCP connection could not be opened (refused, unreachable, proxy said no)."""
    TLS_FAILED = 101
    """The TLS handshake failed, e.g. the server certificate did not verify."""
    TIMEOUT = 102
    """The server did not answer within the configured time."""
    CONNECTION_CLOSED = 103
    """The connection closed before the response was complete."""
    MALFORMED_HTTP = 104
    """The bytes received are not an HTTP/1.x response."""
    RESPONSE_TOO_LARGE = 105
    """The response body exceeded the configured limit."""

    @property
    def is_transport(self) -> bool:
        """True for failures below HTTP (the request may never have reached the server)."""
        return self >= 100


@dataclass(frozen=True, slots=True)
class EstError:
    """A failed exchange: the kind, a one-line human detail, and the HTTP status if any."""

    kind: ErrorKind
    detail: str
    status: int | None = None

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.kind.name}{status}: {self.detail}"


@dataclass(frozen=True, slots=True)
class AuthRequired:
    """HTTP 401: the server wants (other) credentials (RFC 7030 §3.2.3).

    ``credentials_sent`` tells "we sent none" (retry with credentials) from "ours were
    refused" (retrying with the same ones is pointless).
    """

    challenge: str | None
    credentials_sent: bool


@dataclass(frozen=True, slots=True)
class Deferred:
    """HTTP 202: the request was accepted but not yet processed (RFC 7030 §4.2.3).

    Send the same request again (`Exchange.resend`) no earlier than ``not_before``.
    ``delay`` is the bounded wait in seconds; ``requested`` what the server asked for.
    """

    delay: float
    requested: float
    not_before: dt.datetime
    deferrals: int


@dataclass(frozen=True, slots=True)
class Redirected:
    """HTTP 307/308 to the same origin: send the same request (`Exchange.resend`) at once; its
    target is now ``target``. ``redirects`` counts the redirects of this exchange."""

    target: str
    status: int
    redirects: int


@dataclass(frozen=True, slots=True)
class CaCerts:
    """A verified /cacerts answer: every certificate chains to the explicit trust anchor."""

    certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class Enrolled:
    """A verified certificate from /simpleenroll or /simplereenroll.

    ``certificate`` holds our CSR's public key; ``chain`` is the verified path from it up to
    and including the trust anchor.
    """

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class CsrAttributes:
    """A /csrattrs answer. ``attrs.items`` is empty when the server has no preferences."""

    attrs: CsrAttrs


Outcome: TypeAlias = (CaCerts | Enrolled | CsrAttributes | Deferred | Redirected | AuthRequired
                      | EstError)
