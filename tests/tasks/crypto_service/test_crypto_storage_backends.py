"""The three key-storage backends behave alike where it matters: restarts, corrupt / missing /
rolled-back stores, replay protection across restarts, failures reported as STORAGE_ERROR with
a log line and no data loss; plus what only a device gives (TPM sealing, keys inside the token)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from durable.faults import FaultyOps
from protocols import crypto as p
from protocols.crypto import KeyFormat, KeyType, Status, Usage
from tasks.crypto_service.backends import open_keystore
from tasks.crypto_service.keystore import FileKeyStore
from tasks.crypto_service.keystore_hsm import HsmKeyStore
from tasks.crypto_service.service import CryptoService

KEY = bytes(range(32))


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    def has(self, *words: str) -> bool:
        return any(all(w in line for w in words) for line in self)


def service(store: Any, log: Any = None, **config: Any) -> CryptoService:
    config.setdefault("rate_limit", {"enabled": False})
    return CryptoService(config, store=store, clock=lambda: 0, log=log)


def call(svc: CryptoService, request: Any) -> tuple[Any, Any]:
    return p.parse_response(svc.handle(request.encode()), request.TYPE)


def ok(svc: CryptoService, request: Any) -> Any:
    status, body = call(svc, request)
    assert status == Status.SUCCESS, f"{request.TYPE.name} -> {status!r}"
    return body


def populate(svc: CryptoService) -> tuple[int, Any]:
    """An AES key, an ML-DSA key; returns the AES key id and one ciphertext."""
    ok(svc, p.KeyImportRequest(7, KeyType.AES_256, Usage(0), KeyFormat.SECRET, KEY))
    ok(svc, p.KeyGenerateRequest(8, KeyType.MLDSA_44))
    return 7, ok(svc, p.AesEncryptRequest(7, b"aad", b"kept across restarts"))


def decrypt(kid: int, enc: Any) -> p.AesDecryptRequest:
    return p.AesDecryptRequest(kid, b"aad", enc.nonce, enc.ciphertext, enc.tag)


# --------------------------------------------------------------------------- every backend


def test_keys_survive_a_restart(key_backend: Any) -> None:
    first = service(key_backend())
    kid, enc = populate(first)
    del first  # no clean shutdown
    second = service(key_backend())
    assert ok(second, decrypt(kid, enc)).plaintext == b"kept across restarts"
    sig = ok(second, p.MldsaSignRequest(8, b"", b"m")).signature
    assert call(second, p.MldsaVerifyRequest(8, b"", sig, b"m"))[0] == Status.SUCCESS


def test_no_secret_in_any_file_of_the_store(key_backend: Any, tmp_path: Path) -> None:
    svc = service(key_backend())
    populate(svc)
    seed = bytes(svc._keys[8].storage_material()[1])
    for path in tmp_path.rglob("keys.store*"):
        blob = path.read_bytes()
        assert KEY not in blob and KEY[:16] not in blob and seed[:16] not in blob, path


def test_replayed_ciphertext_is_refused_after_a_restart(key_backend: Any) -> None:
    first = service(key_backend())
    kid, enc = populate(first)
    assert ok(first, decrypt(kid, enc)).plaintext == b"kept across restarts"
    other = ok(first, p.AesEncryptRequest(kid, b"aad", b"not yet decrypted"))
    del first
    second = service(key_backend())  # restart: the window comes back from the journal
    assert call(second, decrypt(kid, enc))[0] == Status.NONCE_REUSE
    assert ok(second, decrypt(kid, other)).plaintext == b"not yet decrypted"
    third = service(key_backend())
    assert call(third, decrypt(kid, other))[0] == Status.NONCE_REUSE


def test_replay_journal_failure_withholds_the_plaintext(key_backend: Any) -> None:
    log = Log()
    ops = FaultyOps()
    svc = service(key_backend(ops=ops), log)
    kid, enc = populate(svc)
    ops.full = True
    assert call(svc, decrypt(kid, enc))[0] == Status.STORAGE_ERROR
    assert log.has("STORAGE", "replay journal")
    ops.full = False
    assert ok(svc, decrypt(kid, enc)).plaintext == b"kept across restarts"  # not recorded as seen before


def test_replay_journal_is_compacted_to_the_window(key_backend: Any) -> None:
    svc = service(key_backend(), replay_window=5)
    kid, _ = populate(svc)
    sealed = [ok(svc, p.AesEncryptRequest(kid, b"aad", bytes([i]))) for i in range(40)]
    for enc in sealed:
        ok(svc, decrypt(kid, enc))
    assert svc._journal.count <= 2 * 5 + 1
    again = service(key_backend(), replay_window=5)
    # the last `window` nonces are remembered after the restart
    assert all(call(again, decrypt(kid, enc))[0] == Status.NONCE_REUSE for enc in sealed[-5:])


def test_corrupt_store_answers_storage_error_and_keeps_the_file(key_backend: Any, tmp_path: Path) -> None:
    first = service(key_backend())
    populate(first)
    del first
    path = tmp_path / "keys.store"
    damaged = bytearray(path.read_bytes())
    damaged[40] ^= 0x01
    path.write_bytes(bytes(damaged))
    log = Log()
    svc = service(key_backend(), log)  # starts; does not raise, does not hang
    for request in (p.KeyListRequest(0), p.AesEncryptRequest(7, b"", b"x"), p.KeyGenerateRequest(0, KeyType.AES_256)):
        assert call(svc, request)[0] == Status.STORAGE_ERROR
    assert call(svc, p.KeyListRequest(0).encode()[:5] and p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert svc.handle(b"\xc7\x01\x7f\x00\x00\x00\x00\x00")[2] == Status.INVALID_TYPE  # header checks first
    assert log.has("STORAGE", "keys.store", "not retried")
    assert path.read_bytes() == bytes(damaged)  # nothing was written over it


def test_missing_store_is_reported_and_created(key_backend: Any) -> None:
    log = Log()
    svc = service(key_backend(), log)
    assert log.has("no key store at", "created an empty one")
    assert ok(svc, p.KeyListRequest(0)).keys == ()


def test_must_exist_refuses_to_start_empty(key_backend: Any, tmp_path: Path) -> None:
    log = Log()
    svc = service(key_backend(must_exist=True), log)
    assert call(svc, p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert log.has("does not exist", "must_exist")
    assert not (tmp_path / "keys.store").exists()


def test_store_deleted_after_use_is_not_silently_replaced(key_backend: Any, tmp_path: Path) -> None:
    first = service(key_backend())
    populate(first)
    del first
    (tmp_path / "keys.store").unlink()
    log = Log()
    svc = service(key_backend(), log)
    assert call(svc, p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert log.has("missing", "was committed")


def test_an_older_copy_of_the_store_is_refused(key_backend: Any, tmp_path: Path) -> None:
    first = service(key_backend(), nonce_lease_block=4)
    kid, _ = populate(first)
    old = (tmp_path / "keys.store").read_bytes()
    nonces = {ok(first, p.AesEncryptRequest(kid, b"", b"m")).nonce for _ in range(9)}  # leases advance
    del first
    (tmp_path / "keys.store").write_bytes(old)  # backup restore / snapshot rollback
    log = Log()
    svc = service(key_backend(), log)
    assert call(svc, p.AesEncryptRequest(kid, b"", b"m"))[0] == Status.STORAGE_ERROR
    assert log.has("rollback detected")
    assert len(nonces) == 9


class BrokenDirSync(FaultyOps):
    broken = False

    def fsync_dir(self, directory: Path) -> None:
        if self.broken:
            raise OSError(5, "I/O error")
        super().fsync_dir(directory)


def test_directory_fsync_failure_after_the_rename_keeps_memory_and_file_consistent(key_backend: Any) -> None:
    log = Log()
    ops = BrokenDirSync()
    svc = service(key_backend(ops=ops), log)
    ops.broken = True
    status, created = call(svc, p.KeyGenerateRequest(0, KeyType.AES_256))
    ops.broken = False
    # the rename happened: the key is in the file, so it is reported as created and kept
    assert status == Status.SUCCESS
    assert log.has("directory could not be synced")
    kid = created.info.key_id
    assert [k.key_id for k in ok(svc, p.KeyListRequest(0)).keys] == [kid]
    after = service(key_backend())
    assert [k.key_id for k in ok(after, p.KeyListRequest(0)).keys] == [kid]


class FullForStore(FaultyOps):
    def create(self, path: Path, mode: int) -> int:
        if self.full and path.name == "keys.store.tmp":
            raise OSError(28, "No space left on device")
        return self.base.create(path, mode)


def test_failure_before_the_rename_changes_nothing_anywhere(key_backend: Any) -> None:
    ops = FullForStore()
    svc = service(key_backend(ops=ops))
    populate(svc)
    ops.full = True
    assert call(svc, p.KeyGenerateRequest(0, KeyType.AES_256))[0] == Status.STORAGE_ERROR
    assert call(svc, p.KeyDestroyRequest(7))[0] == Status.STORAGE_ERROR
    ops.full = False
    assert sorted(k.key_id for k in ok(svc, p.KeyListRequest(0)).keys) == [7, 8]
    after = service(key_backend())
    assert sorted(k.key_id for k in ok(after, p.KeyListRequest(0)).keys) == [7, 8]


# --------------------------------------------------------------------------- the KEK copy


def test_file_store_consumes_and_zeroes_the_kek_buffer(tmp_path: Path) -> None:
    kek = bytearray(os.urandom(32))
    FileKeyStore(tmp_path / "k.store", kek)
    assert kek == bytearray(32)


def test_task_loader_zeroes_every_kek_copy(tmp_path: Path, monkeypatch: Any) -> None:
    from tasks.crypto_service import keystore, task

    seen: list[bytearray] = []
    original = keystore.AesSealer.__init__

    def spy(self: Any, kek: bytearray, *args: Any) -> None:
        seen.append(kek)
        original(self, kek, *args)

    monkeypatch.setattr(keystore.AesSealer, "__init__", spy)
    kek_bytes = os.urandom(32)

    class Env:
        def rom(self, name: str) -> str:
            return name

        def dataspace_size(self, rom: str) -> int:
            return 32

        def map_dataspace(self, rom: str) -> Any:
            return type("M", (), {"read": lambda self, off, n: kek_bytes})()

    monkeypatch.chdir(tmp_path)
    svc = task.load_service(Env(), {"storage": {"backend": "file", "path": "keys.store", "kek_rom": "kek"},
                                    "rate_limit": {"enabled": False}}, "gw")
    assert ok(svc, p.KeyListRequest(0)).keys == ()
    assert seen and all(buf == bytearray(len(buf)) for buf in seen)


# --------------------------------------------------------------------------- TPM


def test_tpm_store_file_and_blob_alone_decrypt_nothing(devices: Any, tmp_path: Path) -> None:
    from kernel_model.host.keystore_devices import Swtpm

    cfg = {"backend": "tpm", "path": str(tmp_path / "keys.store"), "tcti": devices.tpm().tcti}
    svc = service(open_keystore(cfg))
    populate(svc)
    # the same files on a machine with another TPM
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for f in tmp_path.glob("keys.store*"):
        shutil.copy(f, elsewhere / f.name)
    other = Swtpm(tmp_path / "other-tpm")
    other.start()
    try:
        log = Log()
        stolen = service(open_keystore({**cfg, "path": str(elsewhere / "keys.store"), "tcti": other.tcti}), log)
        assert call(stolen, p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
        assert log.has("cannot load the sealed KEK")
    finally:
        from tasks.crypto_service import keystore_tpm

        esapi = keystore_tpm._CONNECTIONS.pop(other.tcti, None)
        if esapi is not None:
            esapi.close()
        other.close()


def test_stopped_swtpm_gives_storage_error_then_recovers_without_loss(devices: Any, tmp_path: Path) -> None:
    tpm = devices.tpm()
    cfg = {"backend": "tpm", "path": str(tmp_path / "keys.store"), "tcti": tpm.tcti}
    log = Log()
    clock = [0]
    svc = CryptoService({"rate_limit": {"enabled": False}, "store_retry_ms": 1000}, store=open_keystore(cfg),
                        clock=lambda: clock[0], log=log)
    kid, enc = populate(svc)
    tpm.stop()
    # what needs the TPM fails with a status and a log line; what does not still works
    assert call(svc, p.KeyGenerateRequest(0, KeyType.AES_256))[0] == Status.STORAGE_ERROR
    assert log.has("STORAGE", "TPM", "does not answer")
    assert ok(svc, decrypt(kid, enc)).plaintext == b"kept across restarts"
    assert ok(svc, p.MldsaSignRequest(8, b"", b"still signing"))
    # a restart while the TPM is down: up, answering STORAGE_ERROR, retrying
    log2 = Log()
    down = CryptoService({"rate_limit": {"enabled": False}}, store=open_keystore(cfg), clock=lambda: clock[0],
                         log=log2)
    assert call(down, p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert log2.has("will retry")
    tpm.start()  # the TPM (swtpm) restarts with its state: keys come back
    clock[0] += 2_000_000_000
    assert sorted(k.key_id for k in ok(down, p.KeyListRequest(0)).keys) == [7, 8]
    assert log2.has("available again")
    assert ok(svc, p.KeyGenerateRequest(0, KeyType.AES_256))  # the first instance reconnects too
    again = service(open_keystore(cfg))
    assert sorted(k.key_id for k in ok(again, p.KeyListRequest(0)).keys) == [1, 7, 8]


def test_tpm_nv_counter_is_the_rollback_witness(devices: Any, tmp_path: Path) -> None:
    cfg = {"backend": "tpm", "path": str(tmp_path / "keys.store"), "tcti": devices.tpm().tcti}
    store = open_keystore(cfg)
    svc = service(store)
    populate(svc)
    # both the store and its file witness rewound together: the TPM's counter still knows
    old = {f.name: f.read_bytes() for f in tmp_path.glob("keys.store*")}
    ok(svc, p.KeyGenerateRequest(0, KeyType.AES_256))
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    log = Log()
    assert call(service(open_keystore(cfg), log), p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert log.has("rollback detected", "TpmCounter")


# --------------------------------------------------------------------------- HSM


def hsm_config(devices: Any, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    label, pin = devices.hsm()
    (tmp_path / "pin").write_text(kw.pop("pin", pin))
    return {"backend": "hsm", "path": str(tmp_path / "keys.store"), "module": "/usr/lib/softhsm/libsofthsm2.so",
            "token_label": label, "pin_file": str(tmp_path / "pin"),
            "softhsm2_conf": str(devices.softhsm_conf), **kw}


def test_hsm_aes_keys_live_in_the_token_and_cannot_leave(devices: Any, tmp_path: Path) -> None:
    from pkcs11 import Attribute

    store = open_keystore(hsm_config(devices, tmp_path))
    assert isinstance(store, HsmKeyStore)
    svc = service(store)
    kid, enc = populate(svc)
    key = svc._keys[kid]
    assert key.device is not None and key.storage_material()[1] == key.device.ref  # only a reference
    obj = key.device.obj
    assert obj[Attribute.SENSITIVE] and not obj[Attribute.EXTRACTABLE]
    ref = bytes(obj[Attribute.ID])
    kek = store._sealer._aead.obj
    assert kek[Attribute.SENSITIVE] and not kek[Attribute.EXTRACTABLE]
    # the token computes exactly AES-256-GCM
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert AESGCM(KEY).decrypt(enc.nonce, enc.ciphertext + enc.tag, b"aad") == b"kept across restarts"
    # destroy removes the token object
    ok(svc, p.KeyDestroyRequest(kid))
    assert not list(store._session.get_objects({Attribute.ID: ref}))


def test_hsm_wrong_pin_is_reported_not_retried_no_data_loss(devices: Any, tmp_path: Path) -> None:
    good = hsm_config(devices, tmp_path)
    svc = service(open_keystore(good))
    populate(svc)
    svc.close()
    before = (tmp_path / "keys.store").read_bytes()
    log = Log()
    bad = service(open_keystore(hsm_config(devices, tmp_path, pin="9999")), log)
    for _ in range(3):
        assert call(bad, p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert log.has("refused the PIN", "not retried")
    assert sum("refused the PIN" in line for line in log) == 1  # one attempt, one line
    assert (tmp_path / "keys.store").read_bytes() == before
    assert sorted(k.key_id for k in ok(service(open_keystore(hsm_config(devices, tmp_path))),
                                        p.KeyListRequest(0)).keys) == [7, 8]


def test_hsm_missing_token_is_reported_and_retried(devices: Any, tmp_path: Path) -> None:
    from kernel_model.host.keystore_devices import init_softhsm_token

    cfg = {**hsm_config(devices, tmp_path), "token_label": f"absent-{os.getpid()}-{tmp_path.name[-12:]}"}
    log = Log()
    clock = [0]
    svc = CryptoService({"rate_limit": {"enabled": False}}, store=open_keystore(cfg), clock=lambda: clock[0],
                        log=log)
    assert call(svc, p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert log.has("not found", "will retry")
    init_softhsm_token(devices.softhsm_conf, cfg["token_label"], (tmp_path / "pin").read_text())  # plugged in
    clock[0] += 2_000_000_000
    assert ok(svc, p.KeyListRequest(0)).keys == ()
    assert log.has("available again")
