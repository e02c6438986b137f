"""The gateway's data path: readings in from the sensor (dataspace + IRQ), sealed and signed batches out.

Config (under the gateway's ``config``)::

    sensor: {shm: readings, irq: ready}   # caps: the sensor's ring (r) and its IRQ (the gateway binds it: s)
    outbox:
      batch: 10            # readings per batch
      max_wait_s: 5        # seal what has arrived after this long, even if fewer
      batches: 0           # stop after this many batches (0 = run until the system stops)

Each batch: the readings as JSON, AES-256-GCM in the crypto service with ``outbox.aad_for(device,
seq)``, an ML-DSA-65 signature (crypto service) over ``outbox.signed_bytes``, the certificate chain
from est_service (GET_CHAIN), written atomically as ``outbox/batch-<seq>.json`` in the work
directory. Sequence numbers and the hash chain continue across boots (the last record is read at
start). After each batch the gateway logs a ``METRIC`` line (crypto requests by status, the
certificate's state and expiry, the outbox) that ``l4emu boot``'s live view shows.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from durable.atomic import atomic_write
from protocols import sensor_ring as ring
from protocols.crypto import KeyType
from protocols.crypto_client import CryptoClient
from protocols.est_service import (
    Format,
    Op,
    Request,
    ServiceStatus,
    Status,
    decode_chain_der,
    decode_response,
)
from tasks.oem_gateway import outbox
from tasks.runtime.errors import IpcError
from tasks.runtime.shm import ShmClient

IRQ_LABEL = 0x5E


class CountingClient(CryptoClient):
    """A crypto client that counts its requests by final status (for the METRIC line)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statuses: Counter[str] = Counter()

    def exchange(self, request):
        status, body = super().exchange(request)
        self.statuses[getattr(status, "name", str(status))] += 1
        return status, body


def last_record(directory: Path) -> outbox.Record | None:
    """The newest well-formed record in the outbox (what the next batch links to)."""
    for path in sorted(directory.glob("batch-*.json"), reverse=True):
        try:
            return outbox.decode(path.read_bytes()[:outbox.MAX_RECORD + 1])
        except (OSError, outbox.OutboxError):
            continue
    return None


class Sealer:
    def __init__(self, env, crypto: CountingClient, est: ShmClient, directory: Path, *, keys: dict):
        self.env, self.crypto, self.est, self.dir = env, crypto, est, directory
        self.aes = keys[KeyType.AES_256]
        self.signer = keys[KeyType.MLDSA_65]
        self.public_key = crypto.export_public(self.signer).public_key
        self.dir.mkdir(parents=True, exist_ok=True)
        last = last_record(self.dir)
        self.seq = last.seq if last else 0
        self.prev = outbox.record_hash(last) if last else outbox.ZERO_HASH
        self.batches = self.readings = 0
        self.chain: tuple[bytes, ...] = ()
        self.device = ""
        self.status: ServiceStatus | None = None

    def refresh_chain(self) -> bool:
        code, payload = decode_response(self.est.transact(Request(Op.GET_CHAIN, Format.DER).encode()))
        ders = decode_chain_der(payload) if code is Status.OK else None
        if not ders:
            self.env.log(f"est_service gave no certificate chain ({code.name})")
            return False
        self.chain = tuple(ders)
        names = x509.load_der_x509_certificate(ders[0]).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.device = str(names[0].value) if names else "unknown-device"
        code, payload = decode_response(self.est.transact(Request(Op.STATUS).encode()))
        self.status = ServiceStatus.decode(payload) if code is Status.OK else None
        return True

    def seal(self, readings: list[ring.Reading]) -> outbox.Record:
        seq = self.seq + 1
        plaintext = json.dumps([r.as_json() for r in readings], separators=(",", ":")).encode()
        aad = outbox.aad_for(self.device, seq)
        sealed = self.crypto.encrypt(self.aes, plaintext, aad=aad)
        record = outbox.Record(self.device, seq, self.prev, int(time.time()), len(readings), readings[0].seq, aad,
                               sealed.nonce, sealed.ciphertext, sealed.tag, self.public_key, self.chain)
        signature = self.crypto.sign(self.signer, outbox.signed_bytes(record), context=outbox.CONTEXT)
        record = outbox.Record(**{**record.__dict__, "signature": signature})
        atomic_write(self.dir / outbox.file_name(seq), outbox.encode(record), mode=0o644)
        self.seq, self.prev = seq, outbox.record_hash(record)
        self.batches += 1
        self.readings += len(readings)
        return record

    def metric(self) -> str:
        cert = {}
        if self.status is not None:
            cert = {"state": self.status.cert_state.name, "not_after": self.status.not_after, "subject": self.device}
        return "METRIC " + json.dumps({
            "crypto": {"ops": sum(self.crypto.statuses.values()), "status": dict(self.crypto.statuses)},
            "cert": cert,
            "outbox": {"batches": self.batches, "readings": self.readings, "seq": self.seq,
                       "dir": str(self.dir)}}, separators=(",", ":"))


def run(env, crypto: CountingClient, keys: dict) -> int:
    """Seal sensor readings until ``outbox.batches`` are done (or forever)."""
    cfg = env.config.get("outbox", {})
    sensor = env.config.get("sensor", {})
    est_caps = env.config["est"]
    est = ShmClient(env, env.cap(est_caps["gate"]), env.cap(est_caps["shm"]), timeout_us=60_000_000)
    batch = max(1, int(cfg.get("batch", 10)))
    max_wait_us = int(float(cfg.get("max_wait_s", 5)) * 1_000_000)
    limit = int(cfg.get("batches", 0))
    sealer = Sealer(env, crypto, est, Path(cfg.get("dir", "outbox")), keys=keys)
    if not sealer.refresh_chain():
        return 1
    irq = env.cap(sensor.get("irq", "ready"))
    status = env.bind_irq(irq, IRQ_LABEL)
    if status < 0:
        env.log(f"cannot bind the sensor IRQ: status {status}")
        return 1
    shm = env.map_dataspace(env.cap(sensor.get("shm", "readings")))
    reader = ring.Reader()
    env.log(f"sealing batches of {batch} readings as {sealer.device} into {sealer.dir}/ "
            f"(next sequence number {sealer.seq + 1})")
    pending: list[ring.Reading] = []
    waited_since = time.monotonic()
    while limit == 0 or sealer.batches < limit:
        msg = env.receive(irq, timeout_us=max_wait_us)
        if not msg.ok and msg.error is not IpcError.RETIMEOUT:
            env.log(f"sensor IRQ receive failed: {msg.error.name}")
            return 1
        pending += reader.take(shm.read(0, shm.size))
        timed_out = time.monotonic() - waited_since >= max_wait_us / 1e6
        while pending and (len(pending) >= batch or timed_out):
            taken, pending = pending[:batch], pending[batch:]
            if sealer.batches % 10 == 0:
                sealer.refresh_chain()  # a renewed certificate is used from the next batch on
            record = sealer.seal(taken)
            env.log(f"batch {record.seq}: {record.readings} readings sealed and signed"
                    + (f" ({reader.lost} readings lost so far)" if reader.lost else ""))
            env.log(sealer.metric())
            waited_since = time.monotonic()
            timed_out = False
            if limit and sealer.batches >= limit:
                break
    env.log(f"outbox: {sealer.batches} batches, {sealer.readings} readings sealed")
    return 0
