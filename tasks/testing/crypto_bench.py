"""Times crypto operations through the full path (this task -> kernel -> crypto task) and logs ``BENCH``."""
import json
import os
import time

from protocols.crypto import KeyType
from protocols.crypto_client import CryptoClient
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


def main(env) -> int:
    rounds = int(env.args[0]) if env.args else 50
    shm = ShmClient(env, env.cap("crypto"), env.cap("crypto_shm"))
    crypto = CryptoClient(shm.transact)
    aes = crypto.generate_key(KeyType.AES_256).info.key_id
    dsa = crypto.generate_key(KeyType.MLDSA_65).info.key_id
    kem = crypto.kem_keygen(KeyType.MLKEM_768).info.key_id
    big = os.urandom(64 * 1024 - 28)  # the largest AES_ENCRYPT whose response fits 64 KiB
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
