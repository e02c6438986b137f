"""WvdS crypto-service wire protocol: a sans-I/O codec.

Bytes in, frozen dataclasses out, and back: no I/O, no crypto, no state.
The byte-level reference (every request and response, the status codes, the
validation order, and which layouts are WvdS facts vs. l4emu definitions) is
``docs/crypto_protocol.md``. Golden-byte tests pin this module to that page.

Every payload class declares its layout once, as a ``LAYOUT`` table of
``_F`` fields (the idol-file idea from hubris). The one codec of
``protocols.layout`` derives ``to_payload()``, ``from_payload()`` and the
construction-time checks from it, so a layout cannot be encoded one way and
decoded another. Request classes
also have ``encode()`` for the whole frame (header included).

``parse_request`` runs the header-and-layout part of the validation order and
returns a request object or the ``Status`` to answer with. It never raises.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, TypeVar, dataclass_transform

from protocols.layout import Field, Layout, Message, message

_T = TypeVar("_T")

REQUEST_MAGIC = 0xC7
RESPONSE_MAGIC = 0xC8
VERSION = 0x01
HEADER_SIZE = 8
MAX_PAYLOAD = 65536  # WvdS: "payload > 64 KB (65536)" -> PAYLOAD_TOO_LARGE
NONCE_SIZE = 12
TAG_SIZE = 16
SHARED_SECRET_SIZE = 32
MAX_AAD = 0xFFFF  # WvdS AES_ENCRYPT: AAD_Length is a u16
MAX_CONTEXT = 255  # FIPS 204: ctx is at most 255 bytes
#: The AES_ENCRYPT *response* (nonce || ct || tag) must fit in 64 KiB as well.
MAX_PLAINTEXT = MAX_PAYLOAD - NONCE_SIZE - TAG_SIZE
#: ... and the matching AES_DECRYPT *request* (KeyID | AAD_Length | AAD | Nonce | Ciphertext | Tag,
#: 34 + A + P bytes) must fit too, or the ciphertext could never be decrypted: A + P <= 65502.
MAX_AAD_AND_PLAINTEXT = MAX_PAYLOAD - (4 + 2 + NONCE_SIZE + TAG_SIZE)
ALLOCATE_KEY_ID = 0  # in create requests: "the service picks the id"
KEY_LIST_PAGE = 4096  # 6 + 4096 * 14 = 57350 bytes, fits in one response

_HEADER = struct.Struct("<BBBBI")
#: l4emu extension (header flags bit 7): a u32 LE sequence number follows the 8-byte header. The
#: client numbers its requests, the service echoes the number in the response, so a late
#: response can never be taken for the answer to a later request. Frames without the flag are
#: plain WvdS frames (and get plain responses).
FLAG_SEQUENCE = 0x80
_SEQUENCE = struct.Struct("<I")
_HEAD_SEQ = struct.Struct("<BBBBII")  #: header + sequence number in one go


class RequestType(IntEnum):
    """Request byte 2. 0x01-0x22 are WvdS; 0x40-0x4F are l4emu extensions."""

    AES_ENCRYPT = 0x01  #: WvdS (layout published)
    AES_DECRYPT = 0x02  #: WvdS (layout ours)
    MLDSA_SIGN = 0x10  #: WvdS (layout ours)
    MLDSA_VERIFY = 0x11  #: WvdS (layout ours)
    MLKEM_KEYGEN = 0x20  #: WvdS (layout ours)
    MLKEM_ENCAPS = 0x21  #: WvdS (layout ours)
    MLKEM_DECAPS = 0x22  #: WvdS (layout ours)
    KEY_GENERATE = 0x40  #: extension: new key of any type
    KEY_IMPORT = 0x41  #: extension: secret (raw AES key / seed) or public key
    KEY_EXPORT_PUBLIC = 0x42  #: extension: the public half, never a secret
    KEY_DESTROY = 0x43  #: extension: forget and zeroize
    KEY_ROTATE = 0x44  #: extension: new material, same id, version + 1
    KEY_LIST = 0x45  #: extension: paged key metadata


class Status(IntEnum):
    """Response byte 2. 0x00-0x09 are WvdS; 0x40-0x46 are l4emu extensions."""

    SUCCESS = 0x00
    INVALID_HEADER = 0x01  #: short header, magic != 0xC7, version != 1, flags not 0 (or 0x80: sequence)
    INVALID_TYPE = 0x02  #: unknown request type
    INVALID_PAYLOAD = 0x03  #: payload layout or length wrong
    KEY_NOT_FOUND = 0x04  #: key id does not exist
    CRYPTO_ERROR = 0x05  #: generic cryptographic error (incl. nonce space exhausted)
    DECRYPTION_FAILED = 0x06  #: GCM tag verification failed
    RATE_LIMITED = 0x07  #: too many requests; no crypto was done
    NONCE_REUSE = 0x08  #: nonce already seen in a decrypt for this key
    PAYLOAD_TOO_LARGE = 0x09  #: request (or the response it implies) > 65536 bytes
    POLICY_DENIED = 0x40  #: the key's usage policy does not allow the operation
    IMPORT_DISABLED = 0x41  #: this image's config forbids this import
    INVALID_SIGNATURE = 0x42  #: ML-DSA signature did not verify
    WRONG_KEY_TYPE = 0x43  #: the key's type cannot do this operation
    KEY_EXISTS = 0x44  #: the explicit key id of a create request is taken
    STORAGE_ERROR = 0x45  #: key store full or persisting failed; nothing changed
    INTERNAL_ERROR = 0x46  #: a service bug, caught at the boundary


class KeyType(IntEnum):
    AES_256 = 0x01
    MLDSA_44 = 0x10
    MLDSA_65 = 0x11
    MLDSA_87 = 0x12
    MLKEM_512 = 0x20
    MLKEM_768 = 0x21
    MLKEM_1024 = 0x22


class Usage(IntFlag):
    """PSA-style usage policy bits (u32 LE). 0 in a create request = type default."""

    ENCRYPT = 0x0001
    DECRYPT = 0x0002
    SIGN = 0x0004
    VERIFY = 0x0008
    ENCAPS = 0x0010
    DECAPS = 0x0020
    EXPORT_PUBLIC = 0x0040
    DESTROY = 0x0080
    ROTATE = 0x0100


ALL_USAGE = Usage(0x01FF)


class KeyFormat(IntEnum):
    SECRET = 0x01  #: AES: raw 32-byte key; ML-DSA: 32-byte seed xi; ML-KEM: 64-byte seed d||z
    PUBLIC = 0x02  #: raw public key (FIPS 204 pk / FIPS 203 ek)


class KeyFlags(IntFlag):
    HAS_SECRET = 0x01  #: the service holds secret material for this key


class ResponseError(ValueError):
    """A response frame is malformed (raised on the client side only)."""


def _usage(value: int) -> Usage:
    if int(value) & ~int(ALL_USAGE):  # (~ on an IntFlag only flips known bits)
        raise ValueError("unknown usage bits")
    return Usage(value)


# --------------------------------------------------------------------------- layout codec


#: A payload field (kind ``u8``/``u16``/``u32``, ``var8``/``var16``, ``fixed``, ``rest``; see
#: ``protocols.layout``, whose one codec derives encode/decode/checks from a ``LAYOUT``).
_F = Field
U32 = _F("u32")
KEY_TYPE = _F("u8", conv=KeyType)
USAGE = _F("u32", conv=_usage)
_Codec = Message


class _Request(_Codec):
    __slots__ = ()
    TYPE: ClassVar[RequestType]
    #: ``parse_request`` of an immutable ``bytes`` frame gives this type's variable byte fields as
    #: read-only views into the frame (no copy of a 64 KiB plaintext); for the AES requests, whose
    #: fields the service only reads during the one request
    VIEWS: ClassVar[bool] = False

    def encode(self, seq: int | None = None) -> bytes:
        """The whole request frame: header (+ sequence number, if ``seq`` is given) + payload."""
        payload = self.to_payload()
        if seq is None:
            return _HEADER.pack(REQUEST_MAGIC, VERSION, self.TYPE, 0, len(payload)) + payload
        return _HEAD_SEQ.pack(REQUEST_MAGIC, VERSION, self.TYPE, FLAG_SEQUENCE, len(payload), seq) + payload

    def frame_parts(self, seq: int) -> tuple[list[Any], int]:
        """The frame with sequence number ``seq`` as buffers to write one after the other
        (header first; no join of a large payload), and its total size."""
        parts = self.payload_parts()
        size = 0
        for part in parts:
            size += len(part)
        parts.insert(0, _HEAD_SEQ.pack(REQUEST_MAGIC, VERSION, self.TYPE, FLAG_SEQUENCE, size, seq))
        return parts, size + _HEAD_SEQ.size


@dataclass_transform(frozen_default=True)
def _request(rtype: RequestType, *layout: _F) -> Callable[[type[_T]], type[_T]]:
    """Class decorator: a ``protocols.layout`` message with TYPE set."""

    def wrap(cls: type[_T]) -> type[_T]:
        made = message(*layout)(cls)
        made.TYPE = rtype  # type: ignore[attr-defined]
        return made

    return wrap


@dataclass_transform(frozen_default=True)
def _response(*layout: _F) -> Callable[[type[_T]], type[_T]]:
    """Class decorator: a ``protocols.layout`` message (declared here so type checkers see the dataclass)."""
    return message(*layout)


# --------------------------------------------------------------------------- requests


@_request(RequestType.AES_ENCRYPT, U32, _F("var16"), _F("rest"))
class AesEncryptRequest(_Request):
    """WvdS: KeyID u32 | AAD_Length u16 | AAD | Plaintext."""

    VIEWS = True
    key_id: int
    aad: bytes
    plaintext: bytes


@_request(RequestType.AES_DECRYPT, U32, _F("var16"), _F("fixed", NONCE_SIZE), _F("rest"), _F("fixed", TAG_SIZE))
class AesDecryptRequest(_Request):
    """KeyID u32 | AAD_Length u16 | AAD | Nonce(12) | Ciphertext | Tag(16)."""

    VIEWS = True
    key_id: int
    aad: bytes
    nonce: bytes
    ciphertext: bytes
    tag: bytes


@_request(RequestType.MLDSA_SIGN, U32, _F("var8"), _F("rest"))
class MldsaSignRequest(_Request):
    """KeyID u32 | CtxLen u8 | Context | Message."""

    key_id: int
    context: bytes
    message: bytes


@_request(RequestType.MLDSA_VERIFY, U32, _F("var8"), _F("var16"), _F("rest"))
class MldsaVerifyRequest(_Request):
    """KeyID u32 | CtxLen u8 | Context | SigLen u16 | Signature | Message."""

    key_id: int
    context: bytes
    signature: bytes
    message: bytes


@_request(RequestType.MLKEM_KEYGEN, U32, KEY_TYPE)
class MlkemKeygenRequest(_Request):
    """KeyID u32 (0 = allocate) | KeyType u8 (an ML-KEM type)."""

    key_id: int
    key_type: KeyType


@_request(RequestType.MLKEM_ENCAPS, U32)
class MlkemEncapsRequest(_Request):
    """KeyID u32."""

    key_id: int


@_request(RequestType.MLKEM_DECAPS, U32, _F("rest"))
class MlkemDecapsRequest(_Request):
    """KeyID u32 | Ciphertext."""

    key_id: int
    ciphertext: bytes


@_request(RequestType.KEY_GENERATE, U32, KEY_TYPE, USAGE)
class KeyGenerateRequest(_Request):
    """KeyID u32 (0 = allocate) | KeyType u8 | Usage u32 (0 = type default)."""

    key_id: int
    key_type: KeyType
    usage: Usage = Usage(0)


@_request(RequestType.KEY_IMPORT, U32, KEY_TYPE, USAGE, _F("u8", conv=KeyFormat), _F("rest"))
class KeyImportRequest(_Request):
    """KeyID u32 (0 = allocate) | KeyType u8 | Usage u32 | Format u8 | Material."""

    key_id: int
    key_type: KeyType
    usage: Usage
    format: KeyFormat
    material: bytes


@_request(RequestType.KEY_EXPORT_PUBLIC, U32)
class KeyExportPublicRequest(_Request):
    """KeyID u32."""

    key_id: int


@_request(RequestType.KEY_DESTROY, U32)
class KeyDestroyRequest(_Request):
    """KeyID u32."""

    key_id: int


@_request(RequestType.KEY_ROTATE, U32)
class KeyRotateRequest(_Request):
    """KeyID u32."""

    key_id: int


@_request(RequestType.KEY_LIST, U32)
class KeyListRequest(_Request):
    """Cursor u32: list keys whose id >= cursor."""

    cursor: int = 0


Request = (
    AesEncryptRequest
    | AesDecryptRequest
    | MldsaSignRequest
    | MldsaVerifyRequest
    | MlkemKeygenRequest
    | MlkemEncapsRequest
    | MlkemDecapsRequest
    | KeyGenerateRequest
    | KeyImportRequest
    | KeyExportPublicRequest
    | KeyDestroyRequest
    | KeyRotateRequest
    | KeyListRequest
)

REQUEST_CLASSES: dict[int, type[Request]] = {cls.TYPE: cls for cls in Request.__args__}


def parse_request(frame: bytes | bytearray | memoryview) -> Request | Status:
    """Decode one request frame, or return the status that rejects it.

    In order (docs/crypto_protocol.md, "Validation order"):

    1. INVALID_HEADER: under 8 bytes, magic != 0xC7, version != 0x01, flags != 0.
    2. INVALID_TYPE: unknown request type.
    3. PAYLOAD_TOO_LARGE: the header's *declared* length > 65536. Decided from
       the 8 header bytes alone, before the payload is touched, so a huge
       request costs O(1) to refuse and the transport can stop copying.
    4. INVALID_PAYLOAD: declared length != bytes present, or the payload does
       not fit its layout (fixed-size payloads must match exactly).

    KEY_NOT_FOUND and everything after it need the key table: see service.py.
    """
    return parse_sequenced_request(frame)[1]


def parse_sequenced_request(frame: bytes | bytearray | memoryview) -> tuple[int | None, Request | Status]:
    """``request_sequence`` and ``parse_request`` in one pass: (sequence number or None, request
    or status). Never raises."""
    try:
        view = memoryview(frame)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
    except TypeError:  # not a flat byte buffer
        return None, Status.INVALID_HEADER
    n = len(view)
    if n < HEADER_SIZE:
        return None, Status.INVALID_HEADER
    magic, version, rtype, flags, length = _HEADER.unpack_from(view)
    seq = None
    if magic == REQUEST_MAGIC and flags == FLAG_SEQUENCE and n >= HEADER_SIZE + _SEQUENCE.size:
        (seq,) = _SEQUENCE.unpack_from(view, HEADER_SIZE)
    head = HEADER_SIZE + (_SEQUENCE.size if flags == FLAG_SEQUENCE else 0)
    if magic != REQUEST_MAGIC or version != VERSION or flags not in (0, FLAG_SEQUENCE) or n < head:
        return seq, Status.INVALID_HEADER
    cls = REQUEST_CLASSES.get(rtype)
    if cls is None:
        return seq, Status.INVALID_TYPE
    if length > MAX_PAYLOAD:
        return seq, Status.PAYLOAD_TOO_LARGE
    if n - head != length:
        return seq, Status.INVALID_PAYLOAD
    try:
        if frame.__class__ is bytes and cls.VIEWS:  # immutable: its byte fields can be views, not copies
            return seq, cls.from_payload_views(view[head:])
        return seq, cls.from_payload(view[head:])
    except ValueError:
        return seq, Status.INVALID_PAYLOAD


# --------------------------------------------------------------------------- responses


@_response(_F("fixed", NONCE_SIZE), _F("rest"), _F("fixed", TAG_SIZE))
class AesEncryptResponse(_Codec):
    """Nonce(12) | Ciphertext | Tag(16)."""

    nonce: bytes
    ciphertext: bytes
    tag: bytes


@_response(_F("rest"))
class AesDecryptResponse(_Codec):
    """Plaintext."""

    plaintext: bytes


@_response(_F("rest"))
class MldsaSignResponse(_Codec):
    """Signature."""

    signature: bytes


@_response()
class EmptyResponse(_Codec):
    """No payload (MLDSA_VERIFY and KEY_DESTROY success)."""


@_response(_F("fixed", SHARED_SECRET_SIZE), _F("rest"))
class MlkemEncapsResponse(_Codec):
    """SharedSecret(32) | Ciphertext."""

    shared_secret: bytes
    ciphertext: bytes


@_response(_F("fixed", SHARED_SECRET_SIZE))
class MlkemDecapsResponse(_Codec):
    """SharedSecret(32)."""

    shared_secret: bytes


@_response(U32, KEY_TYPE, _F("u8", conv=KeyFlags), USAGE, U32)
class KeyInfo(_Codec):
    """KeyID u32 | KeyType u8 | Flags u8 | Usage u32 | Version u32 (14 bytes)."""

    SIZE: ClassVar[int] = 14
    key_id: int
    key_type: KeyType
    flags: KeyFlags
    usage: Usage
    version: int


@dataclass(frozen=True, slots=True)
class KeyResponse:
    """KeyInfo(14) | PublicKey (empty for AES).

    Answers MLKEM_KEYGEN, KEY_GENERATE, KEY_IMPORT, KEY_EXPORT_PUBLIC, KEY_ROTATE.
    """

    info: KeyInfo
    public_key: bytes

    def to_payload(self) -> bytes:
        return self.info.to_payload() + self.public_key

    @classmethod
    def from_payload(cls, data: bytes | bytearray | memoryview) -> KeyResponse:
        data = bytes(data)
        return cls(KeyInfo.from_payload(data[: KeyInfo.SIZE]), data[KeyInfo.SIZE :])


_KEY_LIST_HEAD = Layout((_F("u16"), U32), ("count", "next_cursor"))


@dataclass(frozen=True, slots=True)
class KeyListResponse:
    """Count u16 | NextCursor u32 (0 = no more) | Count x KeyInfo(14)."""

    next_cursor: int
    keys: tuple[KeyInfo, ...]

    def __post_init__(self) -> None:
        if len(self.keys) > KEY_LIST_PAGE:
            raise ValueError("too many keys for one page")

    def to_payload(self) -> bytes:
        return _KEY_LIST_HEAD.encode([len(self.keys), self.next_cursor]) + b"".join(k.to_payload() for k in self.keys)

    @classmethod
    def from_payload(cls, data: bytes | bytearray | memoryview) -> KeyListResponse:
        data = bytes(data)
        count, next_cursor = _KEY_LIST_HEAD.unpack_from(data)  # DecodeError (a ValueError) if short
        if len(data) != 6 + count * KeyInfo.SIZE:
            raise ValueError("KEY_LIST count does not match the payload length")
        keys = tuple(
            KeyInfo.from_payload(data[6 + i * KeyInfo.SIZE : 6 + (i + 1) * KeyInfo.SIZE])
            for i in range(count)
        )
        return cls(next_cursor, keys)


Response = (
    AesEncryptResponse
    | AesDecryptResponse
    | MldsaSignResponse
    | EmptyResponse
    | MlkemEncapsResponse
    | MlkemDecapsResponse
    | KeyResponse
    | KeyListResponse
)

RESPONSE_CLASSES: dict[RequestType, type[Response]] = {
    RequestType.AES_ENCRYPT: AesEncryptResponse,
    RequestType.AES_DECRYPT: AesDecryptResponse,
    RequestType.MLDSA_SIGN: MldsaSignResponse,
    RequestType.MLDSA_VERIFY: EmptyResponse,
    RequestType.MLKEM_KEYGEN: KeyResponse,
    RequestType.MLKEM_ENCAPS: MlkemEncapsResponse,
    RequestType.MLKEM_DECAPS: MlkemDecapsResponse,
    RequestType.KEY_GENERATE: KeyResponse,
    RequestType.KEY_IMPORT: KeyResponse,
    RequestType.KEY_EXPORT_PUBLIC: KeyResponse,
    RequestType.KEY_DESTROY: EmptyResponse,
    RequestType.KEY_ROTATE: KeyResponse,
    RequestType.KEY_LIST: KeyListResponse,
}


def request_sequence(frame: bytes | bytearray | memoryview) -> int | None:
    """The sequence number a request frame carries (None: a plain WvdS frame, or no header)."""
    try:
        view = memoryview(frame).cast("B")
    except TypeError:
        return None
    if len(view) < HEADER_SIZE + _SEQUENCE.size or view[0] != REQUEST_MAGIC or view[3] != FLAG_SEQUENCE:
        return None
    return int(_SEQUENCE.unpack_from(view, HEADER_SIZE)[0])


def response_sequence(frame: bytes | bytearray | memoryview) -> int | None:
    """The sequence number a response frame echoes (None if it carries none)."""
    view = memoryview(frame).cast("B")
    if len(view) < HEADER_SIZE + _SEQUENCE.size or view[0] != RESPONSE_MAGIC or view[3] != FLAG_SEQUENCE:
        return None
    return int(_SEQUENCE.unpack_from(view, HEADER_SIZE)[0])


def encode_response(status: Status, body: Response | None = None, seq: int | None = None) -> bytes:
    """Response frame: C8 | 01 | Status | flags | u32 LE length | [u32 LE seq] | payload.

    An error status always goes out with an empty payload; ``seq`` (the request's) is echoed.
    """
    return b"".join(response_parts(status, body, seq))


def response_parts(status: Status, body: Response | None = None, seq: int | None = None) -> list[Any]:
    """``encode_response`` as buffers to write one after the other (header first)."""
    if body is None or status != Status.SUCCESS:
        if seq is None:
            return [_HEADER.pack(RESPONSE_MAGIC, VERSION, status, 0, 0)]
        return [_HEAD_SEQ.pack(RESPONSE_MAGIC, VERSION, status, FLAG_SEQUENCE, 0, seq)]
    get_parts = getattr(body, "payload_parts", None)
    parts = get_parts() if get_parts is not None else [body.to_payload()]
    size = 0
    for part in parts:
        size += len(part)
    if seq is None:
        parts.insert(0, _HEADER.pack(RESPONSE_MAGIC, VERSION, status, 0, size))
    else:
        parts.insert(0, _HEAD_SEQ.pack(RESPONSE_MAGIC, VERSION, status, FLAG_SEQUENCE, size, seq))
    return parts


def parse_response(
    frame: bytes | bytearray | memoryview, request_type: RequestType
) -> tuple[Status | int, Response | None]:
    """Client side: (status, decoded body or None) from a response frame.

    The status comes back as a plain ``int`` if it is not a known ``Status``.
    Raises ResponseError for anything that is not a well-formed response.
    """
    _seq, status, body = parse_sequenced_response(frame, request_type)
    return status, body


_STATUS_OF: dict[int, Status] = {int(s): s for s in Status}


_ANY = -1


def parse_sequenced_response(
    frame: bytes | bytearray | memoryview, request_type: RequestType, expect: int | None = _ANY
) -> tuple[int | None, Status | int, Response | None]:
    """``response_sequence`` then ``parse_response`` in one pass: (echoed sequence number or
    None, status, body). With ``expect`` (a sequence number, or None for a plain frame), a
    response that echoes anything else is returned as ``(its sequence, -1, None)`` without
    looking further (it answers another frame). Every field is read from ``frame`` once (a
    shared buffer can change under the reader: each byte field of the body is copied out as
    it is decoded)."""
    view = frame if frame.__class__ is memoryview and frame.format == "B" else memoryview(frame).cast("B")
    n = len(view)
    seq = None
    if n >= HEADER_SIZE + _SEQUENCE.size:  # header and sequence number in one unpack
        magic, version, raw_status, flags, length, seq = _HEAD_SEQ.unpack_from(view)
        if magic != RESPONSE_MAGIC or flags != FLAG_SEQUENCE:
            seq = None
    elif n >= HEADER_SIZE:
        magic, version, raw_status, flags, length = _HEADER.unpack_from(view)
    if expect != _ANY and seq != expect:
        return seq, -1, None
    if n < HEADER_SIZE:
        raise ResponseError("response shorter than its header")
    head = HEADER_SIZE + (_SEQUENCE.size if flags == FLAG_SEQUENCE else 0)
    if magic != RESPONSE_MAGIC or version != VERSION or flags not in (0, FLAG_SEQUENCE) or n < head:
        raise ResponseError("bad response magic, version or flags")
    if n - head != length:
        raise ResponseError("response length field does not match the frame")
    status: Status | int = _STATUS_OF.get(raw_status, raw_status)
    if status != Status.SUCCESS:
        if length:
            raise ResponseError("error response with a payload")
        return seq, status, None
    try:
        body = RESPONSE_CLASSES[request_type].from_payload(view[head:])
    except ValueError as exc:
        raise ResponseError(f"malformed {request_type.name} response: {exc}") from exc
    return seq, status, body
