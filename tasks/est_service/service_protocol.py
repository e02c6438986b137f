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
import struct

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tasks.runtime.status import decode_status, encode_status

MAX_DETAIL = 512
_STATUS_HEAD = struct.Struct("<BBHHHIIqqH")
assert _STATUS_HEAD.size == 34


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
        if self.op is Op.STATUS:
            return bytes([self.op])
        return bytes([self.op, self.format])


def decode_request(raw: bytes) -> Request | None:
    """None for anything malformed."""
    if not raw:
        return None
    try:
        op = Op(raw[0])
    except ValueError:
        return None
    if op is Op.STATUS:
        return Request(op) if len(raw) == 1 else None
    if len(raw) != 2:
        return None
    try:
        return Request(op, Format(raw[1]))
    except ValueError:
        return None


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
        return _STATUS_HEAD.pack(self.cert_state, self.activity, self.error_code & 0xFFFF,
                                 self.http_status & 0xFFFF, min(self.failures, 0xFFFF),
                                 self.successes & 0xFFFFFFFF, self.errors & 0xFFFFFFFF,
                                 self.not_after, self.next_attempt, len(detail)) + detail

    @classmethod
    def decode(cls, raw: bytes) -> "ServiceStatus | None":
        if len(raw) < _STATUS_HEAD.size:
            return None
        (state, activity, code, http, failures, successes, errors, not_after, next_attempt,
         n) = _STATUS_HEAD.unpack_from(raw)
        if len(raw) != _STATUS_HEAD.size + n:
            return None
        try:
            return cls(CertState(state), Activity(activity), code, http, failures, successes, errors,
                       not_after, next_attempt, raw[_STATUS_HEAD.size:].decode("utf-8", "replace"))
        except ValueError:
            return None


def encode_response(status: Status, payload: bytes = b"") -> bytes:
    return encode_status(status, payload)


def decode_response(raw: bytes) -> tuple[Status, bytes]:
    """(status, payload); an empty or unknown status byte reads as BAD_REQUEST."""
    return decode_status(raw, Status, Status.BAD_REQUEST)


def too_large(needed: int) -> bytes:
    return encode_response(Status.TOO_LARGE, struct.pack("<I", needed))


def encode_cert(cert: x509.Certificate, fmt: Format) -> bytes:
    return cert.public_bytes(Encoding.PEM if fmt is Format.PEM else Encoding.DER)


def encode_chain(chain: tuple[x509.Certificate, ...] | list[x509.Certificate], fmt: Format) -> bytes:
    if fmt is Format.PEM:
        return b"".join(c.public_bytes(Encoding.PEM) for c in chain)
    out = bytearray()
    for cert in chain:
        der = cert.public_bytes(Encoding.DER)
        out += struct.pack("<I", len(der)) + der
    return bytes(out)


def decode_chain_der(raw: bytes) -> list[bytes] | None:
    """The DER certificates of a GET_CHAIN (DER) answer; None if the framing is broken."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            return None
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if n == 0 or pos + n > len(raw):
            return None
        out.append(raw[pos:pos + n])
        pos += n
    return out
