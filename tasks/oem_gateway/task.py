"""The OEM gateway: the integrator's own code, using the WvdS crypto service and est_service.

This is the part a real integrator replaces with their gateway; it shows the
calls they make. It holds no key: every operation goes through its one
capability to the crypto service (a gate plus a shared dataspace), and its
device certificate comes from est_service. Config::

    config:
      crypto: {gate: crypto, shm: crypto_shm}
      est: {gate: est, shm: est_shm}      # optional
      enrollment_wait_s: 60               # how long to wait for est_service's first certificate
      payload_kib: 200                     # size of the chunked-encryption demo
      sensor: {shm: readings, irq: ready}  # optional: seal the sensor's readings into the outbox
      outbox: {batch: 10, max_wait_s: 5, batches: 0}   # (tasks/oem_gateway/sealer.py)

Without ``sensor`` it runs its demo and exits; with it, it then seals batches until the system stops.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from protocols.crypto import KeyType
from protocols.crypto_client import CryptoClient
from tasks.oem_gateway.patience import patient
from tasks.runtime.shm import ShmClient

if TYPE_CHECKING:
    from tasks.oem_gateway.sealer import CountingClient


def crypto_client(env) -> CountingClient:
    from tasks.oem_gateway.sealer import CountingClient
    caps = env.config.get("crypto", {"gate": "crypto", "shm": "crypto_shm"})
    shm = ShmClient(env, env.cap(caps["gate"]), env.cap(caps["shm"]), timeout_us=60_000_000)
    # backoff (on RATE_LIMITED, and while the service restarts) sleeps in the kernel (a receive timeout)
    def sleep(seconds: float) -> None:
        env.sleep(int(seconds * 1_000_000))

    return CountingClient(patient(shm.transact, sleep, log=env.log), sleep=sleep)


def key_of_type(crypto: CryptoClient, existing: dict, key_type: KeyType) -> int:
    """The gateway's key of this type: kept in the service across boots, created once."""
    if key_type in existing:
        return existing[key_type]
    if key_type in (KeyType.MLKEM_512, KeyType.MLKEM_768, KeyType.MLKEM_1024):
        return crypto.kem_keygen(key_type).info.key_id
    return crypto.generate_key(key_type).info.key_id


def run_crypto_demo(env, crypto: CryptoClient) -> None:
    existing: dict[KeyType, int] = {}
    for info in crypto.list_keys():
        existing.setdefault(info.key_type, info.key_id)
    aes = key_of_type(crypto, existing, KeyType.AES_256)
    sealed = crypto.encrypt(aes, b"temperature=21.5C", aad=b"device-42")
    assert crypto.decrypt(aes, sealed.nonce, sealed.ciphertext, sealed.tag, aad=b"device-42") == b"temperature=21.5C"
    env.log(f"AES-256-GCM: key {aes}, service-chosen nonce {sealed.nonce.hex()}, round trip ok")

    size = int(env.config.get("payload_kib", 200)) * 1024
    blob = hashlib.shake_256(b"firmware").digest(size)
    chunked = crypto.encrypt_chunked(aes, blob, aad=b"fw-1.2.3")
    assert crypto.decrypt_chunked(aes, chunked, aad=b"fw-1.2.3") == blob
    env.log(f"chunked AES-256-GCM: {size // 1024} KiB in {len(chunked.chunks)} chunks, round trip ok")

    signer = key_of_type(crypto, existing, KeyType.MLDSA_65)
    signature = crypto.sign(signer, b"telemetry batch 7", context=b"oem")
    assert crypto.verify(signer, b"telemetry batch 7", signature, context=b"oem")
    assert not crypto.verify(signer, b"telemetry batch 8", signature, context=b"oem")
    public = crypto.export_public(signer)
    env.log(f"ML-DSA-65: {len(signature)}-byte signature verified; public key {len(public.public_key)} bytes exported")

    kem = key_of_type(crypto, existing, KeyType.MLKEM_768)
    encaps = crypto.kem_encaps(kem)
    assert crypto.kem_decaps(kem, encaps.ciphertext) == encaps.shared_secret
    env.log(f"ML-KEM-768: encapsulated and decapsulated, shared secrets match ({len(encaps.shared_secret)} bytes)")
    kept = "reused from an earlier boot" if existing else "created"
    env.log(f"keys in the service: {len(crypto.list_keys())}, {kept} (secret material never left it)")


def main(env) -> int:
    crypto = crypto_client(env)
    try:
        run_crypto_demo(env, crypto)
    except AssertionError as exc:
        env.log(f"crypto demo FAILED: {exc!r}")
        return 1
    if "est" in env.config:
        from tasks.oem_gateway.enrollment import show_certificate
        if not show_certificate(env, env.config["est"], float(env.config.get("enrollment_wait_s", 60))):
            return 1
    if "sensor" in env.config:
        from tasks.oem_gateway import sealer
        existing: dict[KeyType, int] = {}
        for info in crypto.list_keys():
            existing.setdefault(info.key_type, info.key_id)
        keys = {t: key_of_type(crypto, existing, t) for t in (KeyType.AES_256, KeyType.MLDSA_65)}
        return sealer.run(env, crypto, keys)
    env.log("gateway done")
    return 0
