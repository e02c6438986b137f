"""Sealed, signed batches of sensor readings: the outbox format and its verification (sans-I/O).

The gateway seals each batch of readings with AES-256-GCM in the crypto service (the AAD binds
the device id and the sequence number, so a batch cannot be replayed under another number or
device), signs the sealed batch with its ML-DSA-65 key (also in the crypto service), and
writes one JSON file per batch, ``batch-<seq>.json``, into ``outbox/`` in its work directory
(``var/run/<image>/gateway/outbox``). Each record carries the device certificate chain that
est_service enrolled (leaf first) and the hash of the previous record, so the outbox is a hash
chain: a removed, reordered, replaced or renumbered batch breaks it.

Record (JSON, bytes as base64 unless noted)::

    {"format": "l4emu-outbox-1", "device": "gateway-0001", "seq": 7,
     "prev": hex SHA-256 of record 6 (64 zeros for the first), "sealed_at": Unix seconds,
     "readings": 20, "first_reading": 140,
     "aad": ..., "nonce": ..., "ciphertext": ..., "tag": ...,
     "algorithm": "ML-DSA-65", "public_key": ..., "chain": [leaf DER, issuer DER, ...],
     "signature": ...}

The signature (context ``l4emu-outbox``) covers ``signed_bytes(record)``: every field above but
the signature, with SHA-256 digests of the ciphertext, the public key and the leaf certificate.

What ``verify`` checks: the format; the AAD is the device id + sequence number; the chain leads
to the given EST CA and each certificate was valid when the batch was sealed; the leaf's CN is
the device id; the ML-DSA signature; the same signing key throughout; sequence numbers without
gaps or repeats, and each record's ``prev`` is the hash of the one before.

Limit (said plainly): the ML-DSA key is bound to the device certificate by the gateway's own
signed statement (the leaf digest is inside the signed bytes), not by the CA -- the EST CA
certifies the device's EC key, which est_service holds and does not sign with for other tasks.
A verifier therefore trusts the first record's key for the rest of the outbox (and
``expected_key`` pins it).
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import struct
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.x509.oid import NameOID

FORMAT = "l4emu-outbox-1"
ALGORITHM = "ML-DSA-65"
CONTEXT = b"l4emu-outbox"
ZERO_HASH = "0" * 64
MAX_RECORD = 1 << 20  #: bytes of one record file; anything larger is refused unread
_B64 = ("aad", "nonce", "ciphertext", "tag", "public_key", "signature")


class OutboxError(ValueError):
    """A record that is not a well-formed outbox record."""


@dataclasses.dataclass(frozen=True)
class Record:
    device: str
    seq: int
    prev: str
    sealed_at: int
    readings: int
    first_reading: int
    aad: bytes
    nonce: bytes
    ciphertext: bytes
    tag: bytes
    public_key: bytes
    chain: tuple[bytes, ...]
    signature: bytes = b""
    algorithm: str = ALGORITHM


def file_name(seq: int) -> str:
    return f"batch-{seq:08d}.json"


def aad_for(device: str, seq: int) -> bytes:
    """The AES-GCM AAD of batch ``seq``: binds the device id and the sequence number."""
    return b"l4emu-batch\0" + device.encode() + b"\0" + struct.pack(">Q", seq)


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def signed_bytes(r: Record) -> bytes:
    """What the signature covers (length-prefixed fields, so no two records encode alike)."""
    sha = lambda b: hashlib.sha256(b).digest()  # noqa: E731
    leaf = r.chain[0] if r.chain else b""
    return b"".join(_field(x) for x in (
        FORMAT.encode(), r.device.encode(), struct.pack(">Q", r.seq), bytes.fromhex(r.prev),
        struct.pack(">qII", r.sealed_at, r.readings, r.first_reading), r.aad, r.nonce, r.tag,
        sha(r.ciphertext), r.algorithm.encode(), sha(r.public_key), sha(leaf)))


def record_hash(r: Record) -> str:
    """What the next record's ``prev`` must be."""
    return hashlib.sha256(signed_bytes(r) + _field(r.signature)).hexdigest()


def encode(r: Record) -> bytes:
    data = {"format": FORMAT, "device": r.device, "seq": r.seq, "prev": r.prev, "sealed_at": r.sealed_at,
            "readings": r.readings, "first_reading": r.first_reading, "algorithm": r.algorithm,
            "chain": [base64.b64encode(c).decode() for c in r.chain]}
    data.update({k: base64.b64encode(getattr(r, k)).decode() for k in _B64})
    return (json.dumps(data, indent=1) + "\n").encode()


def decode(raw: bytes) -> Record:
    """A record from its file's bytes; ``OutboxError`` names what is wrong."""
    if len(raw) > MAX_RECORD:
        raise OutboxError(f"record larger than {MAX_RECORD} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise OutboxError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OutboxError(f"not an {FORMAT} record")
    try:
        ints = {k: data[k] for k in ("seq", "sealed_at", "readings", "first_reading")}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints.values()):
            raise OutboxError("seq, sealed_at, readings and first_reading must be integers >= 0")
        blobs = {k: base64.b64decode(data[k], validate=True) for k in _B64}
        chain = tuple(base64.b64decode(c, validate=True) for c in data["chain"])
        prev, device, algorithm = data["prev"], data["device"], data["algorithm"]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, OutboxError):
            raise
        raise OutboxError(f"missing or malformed field: {exc}") from None
    if not (isinstance(prev, str) and len(prev) == 64 and all(c in "0123456789abcdef" for c in prev)):
        raise OutboxError("prev must be 64 lower-case hex digits")
    if not isinstance(device, str) or not isinstance(algorithm, str) or not chain:
        raise OutboxError("device and algorithm must be strings, chain a non-empty list")
    return Record(device, ints["seq"], prev, ints["sealed_at"], ints["readings"], ints["first_reading"],
                  blobs["aad"], blobs["nonce"], blobs["ciphertext"], blobs["tag"], blobs["public_key"], chain,
                  blobs["signature"], algorithm)


# ------------------------------------------------------------------ verification
@dataclasses.dataclass
class Finding:
    name: str  #: the record's file name
    seq: int | None
    ok: bool
    message: str


@dataclasses.dataclass
class Report:
    findings: list[Finding]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return bool(self.findings) and all(f.ok for f in self.findings)


def _cn(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def check_chain(chain: Iterable[bytes], ca: x509.Certificate, when: dt.datetime) -> str | None:
    """None if the chain (leaf first) leads to ``ca`` and every certificate was valid at ``when``."""
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as exc:
        return f"certificate chain does not parse: {exc}"
    certs = [c for c in certs if c != ca]  # the chain may end with the trust anchor itself
    if not certs:
        return "the chain holds no device certificate"
    for cert, issuer in zip(certs, certs[1:] + [ca], strict=True):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, Exception) as exc:  # InvalidSignature is not a ValueError
            return f"{cert.subject.rfc4514_string()} is not issued by {issuer.subject.rfc4514_string()}: " \
                   f"{type(exc).__name__} {exc}".rstrip()
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            return f"{cert.subject.rfc4514_string()} was not valid at {when:%Y-%m-%d %H:%M:%S} UTC"
    return None


def verify(files: list[tuple[str, bytes]], ca: x509.Certificate, *, expected_key: bytes | None = None) -> Report:
    """Check every record (``(file name, bytes)``) and the chain between them. Pure; no clock."""
    findings: list[Finding] = []
    notes: list[str] = []
    records: list[tuple[str, Record]] = []
    for name, raw in sorted(files):
        try:
            r = decode(raw)
        except OutboxError as exc:
            findings.append(Finding(name, None, False, str(exc)))
            continue
        problem = _check_record(name, r, ca)
        findings.append(Finding(name, r.seq, problem is None, problem or
                                f"{r.readings} readings from {r.device}, sealed "
                                f"{dt.datetime.fromtimestamp(r.sealed_at, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"))
        records.append((name, r))
    records.sort(key=lambda nr: nr[1].seq)
    key = expected_key if expected_key is not None else (records[0][1].public_key if records else None)
    previous: Record | None = None
    by_name = {f.name: f for f in findings}
    for name, r in records:
        problems = []
        if r.public_key != key:
            problems.append("signed with another key than the rest of the outbox" if expected_key is None
                            else "signed with another key than the expected one")
        if previous is None:
            if r.seq != 1 or r.prev != ZERO_HASH:
                notes.append(f"the outbox starts at sequence number {r.seq} (earlier batches are not here); its "
                             f"first record's link back is not checked")
        else:
            if r.seq == previous.seq:
                problems.append(f"sequence number {r.seq} appears twice")
            elif r.seq != previous.seq + 1:
                problems.append(f"gap: sequence numbers {previous.seq + 1}..{r.seq - 1} are missing")
            elif r.prev != record_hash(previous):
                problems.append(f"does not link to batch {previous.seq} (its prev hash differs): a batch was "
                                f"replaced or edited")
            if r.device != previous.device:
                problems.append(f"device changed from {previous.device} to {r.device}")
        if problems:
            f = by_name[name]
            msg = "; ".join(problems)
            f.message = msg if f.ok else f"{f.message}; {msg}"
            f.ok = False
        previous = r
    if not files:
        notes.append("the outbox is empty")
    return Report(findings, notes)


def _check_record(name: str, r: Record, ca: x509.Certificate) -> str | None:
    if name != file_name(r.seq):
        return f"file name says another sequence number than the record ({r.seq})"
    if r.algorithm != ALGORITHM:
        return f"unknown signature algorithm {r.algorithm!r}"
    if r.aad != aad_for(r.device, r.seq):
        return "the AES-GCM AAD does not bind this device id and sequence number"
    when = dt.datetime.fromtimestamp(r.sealed_at, dt.UTC)
    problem = check_chain(r.chain, ca, when)
    if problem:
        return problem
    leaf = x509.load_der_x509_certificate(r.chain[0])
    if _cn(leaf) != r.device:
        return f"the certificate is for {_cn(leaf)!r}, the record for {r.device!r}"
    try:
        mldsa.MLDSA65PublicKey.from_public_bytes(r.public_key).verify(r.signature, signed_bytes(r), CONTEXT)
    except ValueError as exc:
        return f"malformed ML-DSA public key: {exc}"
    except Exception:
        return "the ML-DSA-65 signature does not verify"
    return None
