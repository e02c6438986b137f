"""The OEM gateway's crypto demo against the crypto service task, through the kernel."""
from __future__ import annotations

IMAGE = """
name: gw-crypto
run: {until: [gateway]}
objects:
  crypto: {type: gate}
  crypto_shm: {type: dataspace, size: 160KiB}
tasks:
  crypto:
    program: crypto_service.task
    config: {clients: {gateway: {gate: crypto, shm: crypto_shm}}}
    caps: {crypto: "crypto:svr", crypto_shm: "crypto_shm:rw"}
  gateway:
    program: oem_gateway.task
    config: {payload_kib: 200}
    caps: {crypto: "crypto:rw", crypto_shm: "crypto_shm:rw"}
"""


def test_gateway_runs_every_operation_through_the_crypto_task(boot):
    system = boot(IMAGE)
    assert system.run(timeout=120) == 0, system.console.text()
    log = system.lines("gateway")
    assert any(line.startswith("AES-256-GCM: key") and line.endswith("round trip ok") for line in log)
    assert "chunked AES-256-GCM: 200 KiB in 4 chunks, round trip ok" in log
    assert any(line.startswith("ML-DSA-65: 3309-byte signature verified; public key 1952 bytes") for line in log)
    assert "ML-KEM-768: encapsulated and decapsulated, shared secrets match (32 bytes)" in log
    assert "keys in the service: 3, created (secret material never left it)" in log
    assert system.kernel.violations == []
