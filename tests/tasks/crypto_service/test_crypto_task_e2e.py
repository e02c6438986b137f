"""The crypto service as a task: every status code provoked through a booted image.

Requests travel client task -> shared dataspace + kernel IPC -> crypto task and back
(the WvdS five-step flow), exactly as the OEM gateway uses them.
"""
from __future__ import annotations

import json
import os
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocols import crypto as p
from protocols.crypto import KeyFormat, KeyType, Status, Usage

IMAGE = """
name: crypto-e2e
run: {until: [client]}
modules:
  script: script.json
  kek: kek.bin
objects:
  crypto: {type: gate}
  crypto_shm: {type: dataspace, size: 160KiB}
tasks:
  crypto:
    program: crypto_service.task
    config:
      clients: {client: {gate: crypto, shm: crypto_shm}}
      service:
        rate_limit: {rate_per_s: 1, burst: 20, cooldown_ms: 100}  # trips on any machine's speed
        storage: {backend: file, path: keys.store, kek_rom: kek}
    caps: {crypto: "crypto:svr", crypto_shm: "crypto_shm:rw", rom: "rom:r"}
  client:
    program: testing.crypto_probe
    args: [script]
    caps: {crypto: "crypto:rw", crypto_shm: "crypto_shm:rw", rom: "rom:r"}
"""

KEY = bytes(range(32))
ALL = Usage(0)  # the key type's default usage


def header(rtype: int, length: int, magic: int = 0xC7) -> bytes:
    return struct.pack("<BBBBI", magic, 1, rtype, 0, length)


def boot_script(boot, tmp_path, entries):
    if not (tmp_path / "kek.bin").exists():  # the device's KEK stays the same across boots
        (tmp_path / "kek.bin").write_bytes(os.urandom(32))
    system = boot(IMAGE, files={"script.json": json.dumps(entries)})
    assert system.run(timeout=120) == 0, system.console.text()
    return system, system.results("client")


def test_every_status_code_end_to_end(boot, tmp_path):
    nonce = bytes(12)
    ct = AESGCM(KEY).encrypt(nonce, b"telemetry", b"hdr")
    body, tag = ct[:-16], ct[-16:]
    frames = [
        p.KeyImportRequest(7, KeyType.AES_256, ALL, KeyFormat.SECRET, KEY).encode(),  # SUCCESS
        b"\xc6" + p.KeyListRequest(0).encode()[1:],  # INVALID_HEADER: bad magic
        header(0x7F, 0),  # INVALID_TYPE
        header(0x01, 3) + b"\x07\x00\x00",  # INVALID_PAYLOAD: truncated AES_ENCRYPT
        p.AesEncryptRequest(99, b"", b"x").encode(),  # KEY_NOT_FOUND
        p.AesDecryptRequest(7, b"hdr", nonce, body, bytes(16)).encode(),  # DECRYPTION_FAILED
        p.AesDecryptRequest(7, b"hdr", nonce, body, tag).encode(),  # SUCCESS (first time)
        p.AesDecryptRequest(7, b"hdr", nonce, body, tag).encode(),  # NONCE_REUSE
        header(0x01, 65537),  # PAYLOAD_TOO_LARGE
    ]
    entries = [{"hex": f.hex()} for f in frames] + [{"hex": p.KeyListRequest(0).encode().hex(), "repeat": 150}]
    system, results = boot_script(boot, tmp_path, entries)
    statuses = [r["status"] for r in results[:-1]]
    assert statuses == [Status.SUCCESS, Status.INVALID_HEADER, Status.INVALID_TYPE, Status.INVALID_PAYLOAD,
                        Status.KEY_NOT_FOUND, Status.DECRYPTION_FAILED, Status.SUCCESS, Status.NONCE_REUSE,
                        Status.PAYLOAD_TOO_LARGE]
    assert all(r["magic"] == 0xC8 for r in results)
    burst = results[-1]["statuses"]
    # 159 requests against a bucket of 20 refilled at 1/s: the limiter must trip however slow the
    # machine is, and the 11+ tokens left after the first nine requests must still be served
    assert sum(burst.values()) == 150
    assert burst.get(str(Status.RATE_LIMITED), 0) > 0
    assert burst.get(str(Status.SUCCESS), 0) >= 11
    assert bytes.fromhex(results[6]["response"])[8:] == b"telemetry"


def test_crypto_error_from_exhausted_nonce_counters_in_the_store(boot, tmp_path):
    """A device whose stored key has used up its nonce counters: encrypt must refuse (0x05), not repeat."""
    from tasks.crypto_service.keys import Key
    from tasks.crypto_service.keystore import FileKeyStore
    from tasks.crypto_service.nonces import COUNTER_LIMIT
    kek = os.urandom(32)
    (tmp_path / "kek.bin").write_bytes(kek)
    key = Key.generate(5, KeyType.AES_256, ALL, os.urandom)
    key.nonce_lease = COUNTER_LIMIT
    store_dir = tmp_path / "run" / "crypto"
    store_dir.mkdir(parents=True)
    FileKeyStore(store_dir / "keys.store.client", bytearray(kek)).save([key], 6)
    system = boot(IMAGE, files={"script.json": json.dumps([{"hex": p.AesEncryptRequest(5, b"", b"x").encode().hex()}])})
    assert system.run(timeout=120) == 0, system.console.text()
    assert [r["status"] for r in system.results("client")] == [Status.CRYPTO_ERROR]


def test_keys_survive_a_restart_and_stay_encrypted_at_rest(boot, tmp_path):
    frames = [p.KeyImportRequest(9, KeyType.AES_256, ALL, KeyFormat.SECRET, KEY).encode()]
    boot_script(boot, tmp_path, [{"hex": f.hex()} for f in frames])
    from kernel_model.host import workdirs  # the work dir's files live in its budget image
    exported = workdirs.export_files(tmp_path / "run" / "crypto", tmp_path / "export")
    stored = (exported / "keys.store.client").read_bytes()
    assert KEY not in stored and stored[:4] == b"L4KS"
    enc = p.AesEncryptRequest(9, b"", b"after restart").encode()
    _, results = boot_script(boot, tmp_path, [{"hex": enc.hex()}])  # same work dir: the store is reloaded
    assert results[0]["status"] == Status.SUCCESS


TWO_CLIENTS = """
name: crypto-clients
run: {until: [client]}
modules:
  script: script.json
objects:
  crypto: {type: gate}
  crypto_shm: {type: dataspace, size: 160KiB}
  crypto_b: {type: gate}
  crypto_b_shm: {type: dataspace, size: 160KiB}
tasks:
  crypto:
    program: crypto_service.task
    config:
      clients:
        a: {gate: crypto, shm: crypto_shm}
        b: {gate: crypto_b, shm: crypto_b_shm, allow: [KEY_LIST, KEY_IMPORT, AES_DECRYPT]}
    caps: {crypto: "crypto:svr", crypto_shm: "crypto_shm:rw", crypto_b: "crypto_b:svr",
           crypto_b_shm: "crypto_b_shm:rw"}
  client:
    program: testing.crypto_probe
    args: [script]
    caps: {crypto: "crypto:rw", crypto_shm: "crypto_shm:rw", crypto_b: "crypto_b:rw",
           crypto_b_shm: "crypto_b_shm:rw", rom: "rom:r"}
"""


def test_clients_have_separate_key_namespaces_and_per_operation_allowlists(boot):
    entries = [
        {"via": "crypto", "hex": p.KeyImportRequest(7, KeyType.AES_256, ALL, KeyFormat.SECRET, KEY).encode().hex()},
        {"via": "crypto", "hex": p.AesEncryptRequest(7, b"", b"a's data").encode().hex()},
        {"via": "crypto_b", "hex": p.AesEncryptRequest(7, b"", b"x").encode().hex()},  # not in b's allowlist
        {"via": "crypto_b", "hex": p.KeyListRequest(0).encode().hex()},
        {"via": "crypto_b", "hex": (b"\xc6" + p.AesEncryptRequest(7, b"", b"x").encode()[1:]).hex()},
        # key 7 exists for a; through b the same id names nothing (shared ids would give DECRYPTION_FAILED)
        {"via": "crypto_b", "hex": p.AesDecryptRequest(7, b"", bytes(12), b"zz", bytes(16)).encode().hex()},
        {"via": "crypto", "hex": p.AesDecryptRequest(7, b"", bytes(12), b"zz", bytes(16)).encode().hex()},
    ]
    system = boot(TWO_CLIENTS, files={"script.json": json.dumps(entries)})
    assert system.run(timeout=120) == 0, system.console.text()
    imported, encrypted, denied, listing, bad_magic, via_b, via_a = system.results("client")
    assert (imported["status"], encrypted["status"]) == (Status.SUCCESS, Status.SUCCESS)
    assert denied["status"] == Status.POLICY_DENIED
    assert p.parse_response(bytes.fromhex(listing["response"]), p.RequestType.KEY_LIST)[1].keys == ()  # b sees none
    assert bad_magic["status"] == Status.INVALID_HEADER  # header checks still come first
    assert via_b["status"] == Status.KEY_NOT_FOUND and via_a["status"] == Status.DECRYPTION_FAILED
