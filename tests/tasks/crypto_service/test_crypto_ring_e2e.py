"""The request ring through a booted image: a client task encrypts 1 MiB in 60 KiB chunks
through the ring (one signal for all chunks), decrypts it back the same way and compares."""
from __future__ import annotations

IMAGE = """
name: crypto-ring
run: {until: [client]}
objects:
  crypto: {type: gate}
  crypto_shm: {type: dataspace, size: 1216KiB}
tasks:
  crypto:
    program: crypto_service.task
    config:
      clients: {client: {gate: crypto, shm: crypto_shm}}
    caps: {crypto: "crypto:svr", crypto_shm: "crypto_shm:rw"}
  client:
    program: testing.crypto_bench
    args: [ring-check, "1024"]
    caps: {crypto: "crypto:rw", crypto_shm: "crypto_shm:rw"}
"""


def test_one_mib_in_60_kib_chunks_through_the_ring_and_back(boot):
    system = boot(IMAGE)
    assert system.run(timeout=120) == 0, system.console.text()
    (result,) = system.results("client")
    assert result["same"] is True
    assert result["bytes"] == 1 << 20
    assert result["chunks"] == 18  # ceil(1 MiB / 60 KiB)
    assert result["slots"] == 18  # 1216 KiB holds 18 slots of 64 KiB + 16 bytes
    assert result["encrypt_signals"] == 1 and result["decrypt_signals"] == 1  # one signal per ring-full
    assert result["distinct_nonces"] == 18
