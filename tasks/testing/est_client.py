"""Asks est_service for its status, certificate and chain; logs one ``RESULT`` JSON line.

Arguments are ``key=value``:

* ``until=success|failure|any`` (default success): poll STATUS until est_service reports at
  least ``count`` (default 1) successful (re-)enrollments / failed attempts / either, since it
  started; ``max_ms`` (default 30000) bounds the wait (then ``"timeout": true``, exit 1).
  Polling waits with a kernel receive timeout (``env.sleep``), 20 ms per round.
* ``probe=1``: first send malformed requests and record the answers.
* ``direct=host:port``: no est_service at all: try to open a TCP connection to ``host:port``
  directly from this task (it holds no capability to the network proxy) and report what
  happened, together with whether the task runs under OS confinement.

Capabilities: ``est`` (gate to est_service) and ``est_shm`` (the shared dataspace).
"""
from __future__ import annotations

import hashlib
import json

from protocols.est_service import (
    Format,
    Op,
    Request,
    ServiceStatus,
    Status,
    decode_chain_der,
    decode_response,
)
from tasks.runtime.shm import SHM_PROTO, ShmClient, ShmError


def _direct(env, endpoint: str) -> int:
    import socket
    host, _, port = endpoint.rpartition(":")
    result = {"confined": env.record.confine is not None,
              "has_net_cap": env.has("net")}
    try:
        sock = socket.create_connection((host, int(port)), timeout=2)
    except OSError as exc:
        result["direct_connect"] = f"failed: {type(exc).__name__}: {exc}"
    else:
        sock.close()
        result["direct_connect"] = "connected"
    env.log("RESULT " + json.dumps(result))
    return 0


def _status(client: ShmClient) -> ServiceStatus | None:
    status, payload = decode_response(client.transact(Request(Op.STATUS).encode()))
    return ServiceStatus.decode(payload) if status is Status.OK else None


def _probe(env, client: ShmClient) -> dict:
    probes = {"empty": b"", "unknown_op": b"\x09", "bad_format": b"\x01\x07", "status_extra": b"\x03\x00",
              "cert_no_format": b"\x01"}
    out = {name: decode_response(client.transact(raw))[0].name for name, raw in probes.items()}
    reply = env.call(client.gate, SHM_PROTO, client.half + 1)  # length beyond the request area
    out["ipc_length_too_long"] = reply.status
    reply = env.call(client.gate, 0x4242, 0)  # not the shared-memory protocol
    out["ipc_wrong_proto"] = reply.status
    return out


def main(env) -> int:
    opts = dict(arg.split("=", 1) for arg in env.args if "=" in arg)
    if "direct" in opts:
        return _direct(env, opts["direct"])
    until, count = opts.get("until", "success"), int(opts.get("count", "1"))
    max_ms = int(opts.get("max_ms", "30000"))
    client = ShmClient(env, env.cap("est"), env.cap("est_shm"), timeout_us=max_ms * 1000)
    result: dict = {}
    try:
        if opts.get("probe"):
            result["probe"] = _probe(env, client)
        seen: list[str] = []
        status = None
        waited = 0
        while True:
            status = _status(client)
            if status is None:
                result["error"] = "STATUS answer malformed"
                break
            if status.activity.name not in seen:
                seen.append(status.activity.name)
            done = {"success": status.successes >= count, "failure": status.errors >= count,
                    "any": status.successes + status.errors >= count}.get(until, False)
            if done:
                break
            if waited >= max_ms:
                result["timeout"] = True
                break
            env.sleep(20_000)
            waited += 20
        if status is not None:
            result.update(cert_state=status.cert_state.name, activity=status.activity.name,
                          activities_seen=seen, error_code=status.error_code, http_status=status.http_status,
                          failures=status.failures, successes=status.successes, errors=status.errors,
                          not_after=status.not_after, next_attempt=status.next_attempt, detail=status.detail)
        code, der = decode_response(client.transact(Request(Op.GET_CERT, Format.DER).encode()))
        result["get_cert"] = code.name
        if code is Status.OK:
            from cryptography import x509
            cert = x509.load_der_x509_certificate(der)
            result["cert_sha256"] = hashlib.sha256(der).hexdigest()
            result["serial"] = f"{cert.serial_number:x}"
            result["subject"] = cert.subject.rfc4514_string()
            code, pem = decode_response(client.transact(Request(Op.GET_CERT, Format.PEM).encode()))
            result["pem_matches_der"] = code is Status.OK and x509.load_pem_x509_certificate(pem) == cert
            code, raw = decode_response(client.transact(Request(Op.GET_CHAIN, Format.DER).encode()))
            chain = decode_chain_der(raw) if code is Status.OK else None
            result["chain_sha256"] = [hashlib.sha256(c).hexdigest() for c in chain] if chain else None
    except ShmError as exc:
        result["error"] = f"est_service unreachable: {exc}"
    env.log("RESULT " + json.dumps(result))
    return 1 if result.get("timeout") or result.get("error") else 0

