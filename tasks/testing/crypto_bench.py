"""Times crypto operations through the full path (this task -> kernel -> crypto task) and logs ``BENCH``.

``args``: ``[rounds]`` (the classic rows), ``["paths", rounds]`` (the fast-path rows: 16 B
AES-GCM, 1 MiB in 60 KiB chunks through the request ring and one by one, ML-KEM-768 encaps,
ML-DSA-65 sign) or ``["ring-check", kib]`` (encrypt ``kib`` KiB in 60 KiB chunks through the
ring, decrypt it back, compare; logs ``RESULT``).
"""
import hashlib
import json
import os
import time

from protocols.crypto import MAX_AAD_AND_PLAINTEXT, KeyType
from protocols.crypto_client import CHUNK_SIZE, CryptoClient
from tasks.runtime.shm import ShmClient


def timed(fn, rounds: int) -> float:
    """Median seconds per call over 5 batches."""
    fn()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        samples.append((time.perf_counter() - start) / rounds)
    return sorted(samples)[2]


class CountingShm(ShmClient):
    """An ``ShmClient`` that counts its signals (kernel IPC calls)."""

    signals = 0

    def transact_parts(self, parts, size):
        self.signals += 1
        return super().transact_parts(parts, size)

    def _ring_pass(self, *args):
        self.signals += 1
        return super()._ring_pass(*args)


def ring_check(env, crypto: CryptoClient, shm: CountingShm, kib: int) -> int:
    data = hashlib.shake_256(b"ring-check").digest(kib * 1024)
    aes = crypto.generate_key(KeyType.AES_256).info.key_id
    before = shm.signals
    sealed = crypto.encrypt_chunked(aes, data, aad=b"ring", chunk_size=CHUNK_SIZE)
    encrypt_signals = shm.signals - before
    back = crypto.decrypt_chunked(aes, sealed, aad=b"ring")
    env.log("RESULT " + json.dumps({
        "same": back == data, "bytes": len(data), "chunks": len(sealed.chunks), "slots": shm.ring_slots,
        "encrypt_signals": encrypt_signals, "decrypt_signals": shm.signals - before - encrypt_signals,
        "distinct_nonces": len({c.nonce for c in sealed.chunks}),
    }))
    return 0


def paths(env, crypto: CryptoClient, rounds: int) -> int:
    aes = crypto.generate_key(KeyType.AES_256).info.key_id
    dsa = crypto.generate_key(KeyType.MLDSA_65).info.key_id
    kem = crypto.kem_keygen(KeyType.MLKEM_768).info.key_id
    small, mib = os.urandom(16), os.urandom(1 << 20)
    one_by_one = CryptoClient(crypto._transact)  # the same transport without the ring
    one_by_one._many = None
    result = {
        "aes16_s": timed(lambda: crypto.encrypt(aes, small), rounds * 20),
        "ring1m_s": timed(lambda: crypto.encrypt_chunked(aes, mib), max(1, rounds // 10)),
        "seq1m_s": timed(lambda: one_by_one.encrypt_chunked(aes, mib), max(1, rounds // 10)),
        "mlkem768_encaps_s": timed(lambda: crypto.kem_encaps(kem), rounds),
        "mldsa65_sign_s": timed(lambda: crypto.sign(dsa, b"message"), rounds),
    }
    env.log("BENCH " + json.dumps(result))
    return 0


def main(env) -> int:
    mode = env.args[0] if env.args and not env.args[0].isdigit() else "classic"
    shm = CountingShm(env, env.cap("crypto"), env.cap("crypto_shm"), timeout_us=120_000_000)
    crypto = CryptoClient(shm.transact)
    if mode == "ring-check":
        return ring_check(env, crypto, shm, int(env.args[1]))
    if mode == "paths":
        return paths(env, crypto, int(env.args[1]))
    rounds = int(env.args[0]) if env.args else 50
    aes = crypto.generate_key(KeyType.AES_256).info.key_id
    dsa = crypto.generate_key(KeyType.MLDSA_65).info.key_id
    kem = crypto.kem_keygen(KeyType.MLKEM_768).info.key_id
    big = os.urandom(MAX_AAD_AND_PLAINTEXT)  # the largest AES_ENCRYPT (its decrypt request must fit 64 KiB too)
    small = os.urandom(16)
    result = {
        "aes64k_s": timed(lambda: crypto.encrypt(aes, big), rounds),
        "aes16_s": timed(lambda: crypto.encrypt(aes, small), rounds * 4),
        "mldsa65_sign_s": timed(lambda: crypto.sign(dsa, b"message"), rounds),
        "mlkem768_encaps_s": timed(lambda: crypto.kem_encaps(kem), rounds),
        "payload": len(big),
    }
    env.log("BENCH " + json.dumps(result))
    return 0
