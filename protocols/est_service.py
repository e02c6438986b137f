"""est_service's service protocol (sans-I/O): what other tasks may ask, as bytes.

Transport: the shared-memory call of `tasks/runtime/shm.py`. Each client has its own IPC gate
(bound by est_service with a label per client) and its own dataspace; the request goes into the
first half, the response comes back in the second half (certificates exceed the 504 bytes of
the message registers). The IPC reply status is the transport's (>= 0, or -L4_E* when the
dataspace/length is wrong); the first response byte is this protocol's `Status`.

Request (all integers little-endian)::

    B op                      op 1 GET_CERT   payload: B format (0 = DER, 1 = PEM)
    | payload                 op 2 GET_CHAIN  payload: B format (0 = DER, 1 = PEM)
                              op 3 STATUS     payload: empty

Response::

    B status | payload
    status 0 OK              payload per op (below)
    status 1 BAD_REQUEST     empty: unknown op, wrong length, unknown format
    status 2 NO_CERTIFICATE  empty: nothing enrolled yet (GET_CERT / GET_CHAIN)
    status 3 TOO_LARGE       u32 bytes needed: the answer does not fit the client's area

    GET_CERT   DER: the certificate's DER          PEM: one PEM block
    GET_CHAIN  DER: repeated (u32 length | DER)    PEM: concatenated PEM blocks
               leaf first, then the issuers, the trust anchor last
    STATUS     fixed 34-byte header, then the last error's text:

    off size field
      0  1   cert_state    0 NONE, 1 VALID, 2 EXPIRED
      1  1   activity      0 IDLE, 1 EXCHANGING, 2 DEFERRED (202, waiting), 3 BACKING_OFF
      2  2   error_code    0 none; 1..199 `results.ErrorKind`; 200 AUTH_REFUSED (HTTP 401);
                           201 LOCAL (est_service itself: storage, key generation)
      4  2   http_status   of the last error, 0 if none
      6  2   failures      consecutive failed attempts (0 after a success)
      8  4   successes     (re-)enrollments that succeeded since est_service started
     12  4   errors        attempts that failed since est_service started
     16  8   not_after     i64 Unix seconds of the current certificate, 0 if none
     24  8   next_attempt  i64 Unix seconds of the next (re-)enrollment attempt, 0 if none
     32  2   detail_len    n (<= 512)
     34  n   detail        UTF-8: the last error as "KIND (HTTP s): text", empty if none

The last error stays in STATUS after a later success (with ``failures`` = 0): it is history,
not the current state. A malformed request gets BAD_REQUEST, never a crash.
"""
from __future__ import annotations

import dataclasses
import enum

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from protocols.layout import I64, U16, U32, VAR32, DecodeError, Field, Layout, Tagged
from protocols.status import decode_status, encode_status

MAX_DETAIL = 512


class Op(enum.IntEnum):
    GET_CERT = 1
    GET_CHAIN = 2
    STATUS = 3


class Format(enum.IntEnum):
    DER = 0
    PEM = 1


class Status(enum.IntEnum):
    OK = 0
    BAD_REQUEST = 1
    NO_CERTIFICATE = 2
    TOO_LARGE = 3


class CertState(enum.IntEnum):
    NONE = 0
    VALID = 1
    EXPIRED = 2


class Activity(enum.IntEnum):
    IDLE = 0
    EXCHANGING = 1
    DEFERRED = 2
    BACKING_OFF = 3


#: Error codes beyond `results.ErrorKind` (which stays below 200).
AUTH_REFUSED = 200
LOCAL_ERROR = 201


@dataclasses.dataclass(frozen=True)
class Request:
    op: Op
    format: Format = Format.DER

    def encode(self) -> bytes:
        return _REQUEST.encode(self.op, self)


# The layouts (``protocols.layout``), declared once.
_FORMAT = Layout((Field("u8", conv=Format),), ("format",))
_REQUEST = Tagged({Op.GET_CERT: _FORMAT, Op.GET_CHAIN: _FORMAT, Op.STATUS: Layout((), ())})
_STATUS = Layout((Field("u8", conv=CertState), Field("u8", conv=Activity), U16, U16, U16, U32, U32, I64, I64,
                  Field("var16", text="replace")),
                 ("cert_state", "activity", "error_code", "http_status", "failures", "successes", "errors",
                  "not_after", "next_attempt", "detail"))
_NEEDED = Layout((U32,), ("needed",))
_CERT = Layout((VAR32,), ("der",))


def decode_request(raw: bytes) -> Request | None:
    """None for anything malformed (any bytes: never an exception)."""
    try:
        op, fields = _REQUEST.decode(raw)
    except DecodeError:
        return None
    return Request(Op(op), **fields)


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    cert_state: CertState = CertState.NONE
    activity: Activity = Activity.IDLE
    error_code: int = 0
    http_status: int = 0
    failures: int = 0
    successes: int = 0
    errors: int = 0
    not_after: int = 0
    next_attempt: int = 0
    detail: str = ""

    def encode(self) -> bytes:
        detail = self.detail.encode("utf-8")[:MAX_DETAIL]
        detail = detail.decode("utf-8", "ignore").encode("utf-8")  # never cut a character in half
        return _STATUS.encode([self.cert_state, self.activity, self.error_code & 0xFFFF, self.http_status & 0xFFFF,
                               min(self.failures, 0xFFFF), self.successes & 0xFFFFFFFF, self.errors & 0xFFFFFFFF,
                               self.not_after, self.next_attempt, detail])

    @classmethod
    def decode(cls, raw: bytes) -> ServiceStatus | None:
        """None for anything malformed (any bytes: never an exception)."""
        try:
            return cls(*_STATUS.check(_STATUS.decode(raw)))
        except ValueError:  # DecodeError, or an unknown cert state / activity
            return None


def encode_response(status: Status, payload: bytes = b"") -> bytes:
    return encode_status(status, payload)


def decode_response(raw: bytes) -> tuple[Status, bytes]:
    """(status, payload); an empty or unknown status byte reads as BAD_REQUEST."""
    return decode_status(raw, Status, Status.BAD_REQUEST)


def too_large(needed: int) -> bytes:
    return encode_response(Status.TOO_LARGE, _NEEDED.pack(needed))


def decode_too_large(payload: bytes) -> int | None:
    """The bytes a TOO_LARGE answer says it needs; None if the payload is not one u32."""
    try:
        return int(_NEEDED.decode(payload)[0])
    except DecodeError:
        return None


def encode_cert(cert: x509.Certificate, fmt: Format) -> bytes:
    return cert.public_bytes(Encoding.PEM if fmt is Format.PEM else Encoding.DER)


def encode_chain(chain: tuple[x509.Certificate, ...] | list[x509.Certificate], fmt: Format) -> bytes:
    if fmt is Format.PEM:
        return b"".join(c.public_bytes(Encoding.PEM) for c in chain)
    return b"".join(_CERT.encode([cert.public_bytes(Encoding.DER)]) for cert in chain)


def decode_chain_der(raw: bytes) -> list[bytes] | None:
    """The DER certificates of a GET_CHAIN (DER) answer; None if the framing is broken."""
    try:
        ders = [der for (der,) in _CERT.decode_repeated(raw)]
    except DecodeError:
        return None
    return ders if all(ders) else None
