"""The gateway asks est_service for the device certificate (it never sees the device key)."""
from __future__ import annotations

from cryptography import x509

from protocols.est_service import CertState, Format, Op, Request, ServiceStatus, Status, decode_response
from tasks.runtime.shm import ShmClient

POLL_US = 200_000


def show_certificate(env, caps: dict, wait_s: float) -> bool:
    est = ShmClient(env, env.cap(caps["gate"]), env.cap(caps["shm"]), timeout_us=60_000_000)
    waited = 0
    status = None
    while waited <= wait_s * 1_000_000:
        code, payload = decode_response(est.transact(Request(Op.STATUS).encode()))
        status = ServiceStatus.decode(payload) if code is Status.OK else None
        if status is not None and status.cert_state is CertState.VALID:
            break
        env.sleep(POLL_US)  # a kernel receive timeout, not a Python sleep
        waited += POLL_US
    if status is None or status.cert_state is not CertState.VALID:
        env.log(f"no device certificate after {wait_s:.0f} s: {status.detail if status else 'no status'}")
        return False
    code, der = decode_response(est.transact(Request(Op.GET_CERT, Format.DER).encode()))
    if code is not Status.OK:
        env.log(f"est_service refused the certificate: {code.name}")
        return False
    cert = x509.load_der_x509_certificate(der)
    env.log(f"device certificate: subject {cert.subject.rfc4514_string()}, issuer "
            f"{cert.issuer.rfc4514_string()}, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return True
