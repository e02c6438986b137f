from cryptography import x509

from protocols.crypto import KeyType
from protocols.crypto_client import CryptoClient
from protocols.est_service import CertState, Format, Op, Request, ServiceStatus, Status, decode_response
from tasks.runtime.shm import ShmClient


def main(env):
    # The crypto service: one gate + one shared dataspace; the client never sees key material.
    crypto_shm = ShmClient(env, env.cap("crypto"), env.cap("crypto_shm"), timeout_us=60_000_000)
    crypto = CryptoClient(crypto_shm.transact, sleep=lambda s: env.sleep(int(s * 1_000_000)))
    key = crypto.generate_key(KeyType.AES_256).info.key_id
    sealed = crypto.encrypt(key, b"21.5 C", aad=b"device-42")
    plain = crypto.decrypt(key, sealed.nonce, sealed.ciphertext, sealed.tag, aad=b"device-42")
    env.log(f"AES-256-GCM round trip: {plain.decode()}")
    signer = crypto.generate_key(KeyType.MLDSA_65).info.key_id
    signature = crypto.sign(signer, b"reading 1", context=b"example")
    env.log(f"ML-DSA-65 signature of {len(signature)} bytes verifies: "
            f"{crypto.verify(signer, b'reading 1', signature, context=b'example')}")

    # est_service: the device certificate (the device key stays inside est_service).
    est = ShmClient(env, env.cap("est"), env.cap("est_shm"), timeout_us=60_000_000)
    for _ in range(300):  # up to 60 s for the first enrollment
        code, payload = decode_response(est.transact(Request(Op.STATUS).encode()))
        status = ServiceStatus.decode(payload) if code is Status.OK else None
        if status is not None and status.cert_state is CertState.VALID:
            break
        env.sleep(200_000)  # a kernel receive timeout, not a Python sleep
    else:
        env.log("no device certificate yet")
        return 1
    code, der = decode_response(est.transact(Request(Op.GET_CERT, Format.DER).encode()))
    if code is not Status.OK:
        env.log(f"est_service said {code.name}")
        return 1
    cert = x509.load_der_x509_certificate(der)
    env.log(f"device certificate for {cert.subject.rfc4514_string()}, valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    return 0
