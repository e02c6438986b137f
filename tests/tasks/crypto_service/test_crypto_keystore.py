"""Key storage: encrypted at rest, atomic replace, crash safety, config selection."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

from protocols import crypto as p
from protocols.crypto import KeyFormat, KeyType, Usage
from tasks.crypto_service.backends import open_keystore
from tasks.crypto_service.keys import Key
from tasks.crypto_service.keystore import (
    WRITE_STEPS,
    FileKeyStore,
    MemoryKeyStore,
    StoreError,
)
from tasks.crypto_service.service import CryptoService


def seeded_rng(seed: int):
    """Deterministic stand-in for os.urandom."""
    return random.Random(seed).randbytes



class SimulatedCrash(BaseException):
    """Process death: BaseException, so no cleanup handler of the store runs."""


def keyset(seed: int) -> list[Key]:
    rng = seeded_rng(seed)
    keys = [Key.generate(i + 1, t, Usage(0), rng) for i, t in enumerate(KeyType)]
    dsa_pub = keys[1].public_key
    keys.append(Key.from_material(50, KeyType.MLDSA_44, Usage.VERIFY, KeyFormat.PUBLIC, dsa_pub))
    keys[0].nonce_lease = 3 << 40
    return keys


def secrets_of(keys: list[Key]) -> list[bytes]:
    return [bytes(k.storage_material()[1]) for k in keys if k.has_secret]


def same(a: list[Key], b: list[Key]) -> bool:
    def facts(k: Key) -> tuple:
        return (k.key_id, k.key_type, k.usage, k.version, k.nonce_lease, k.public_key, bytes(k.storage_material()[1]))

    return sorted(map(facts, a)) == sorted(map(facts, b))


@pytest.fixture
def kek() -> bytearray:
    return bytearray(seeded_rng(99)(32))


def file_store(path: Path, kek: bytearray, hook=None) -> FileKeyStore:
    return FileKeyStore(path, bytearray(kek), seeded_rng(5), step_hook=hook)


def test_memory_store_round_trip() -> None:
    store = MemoryKeyStore()
    assert store.load()[:2] == ([], 1)
    keys = keyset(1)
    store.save(keys, 77)
    loaded = store.load()
    assert same(loaded.keys, keys) and loaded.next_key_id == 77
    assert loaded.keys[0] is not keys[0]  # fresh objects, independent zeroization


def test_file_store_round_trip_and_loaded_keys_work(tmp_path: Path, kek: bytearray) -> None:
    keys = keyset(2)
    file_store(tmp_path / "keys.bin", kek).save(keys, 9)
    loaded = file_store(tmp_path / "keys.bin", kek).load()
    assert same(loaded.keys, keys) and loaded.next_key_id == 9
    nonce = bytes(12)
    sealed = keys[0].aead().encrypt(nonce, b"data", b"")
    assert loaded.keys[0].aead().decrypt(nonce, sealed, b"") == b"data"


def test_no_key_material_in_the_file(tmp_path: Path, kek: bytearray) -> None:
    keys = keyset(3)
    path = tmp_path / "keys.bin"
    file_store(path, kek).save(keys, 2)
    blob = path.read_bytes()
    assert blob[:6] == b"L4KS\x02\x00"  # format 2, File backend
    for secret in secrets_of(keys):
        for i in range(0, len(secret) - 8, 8):  # not even an 8-byte window of it
            assert secret[i : i + 8] not in blob
    assert keys[1].public_key[:32] not in blob  # the whole image is sealed
    assert bytes(kek) not in blob
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # tag
        lambda b: b[:30] + bytes([b[30] ^ 0x80]) + b[31:],  # ciphertext
        lambda b: b[:9] + bytes([b[9] ^ 1]) + b[10:],  # nonce (authenticated as AAD too)
        lambda b: b[:-5],  # truncated
        lambda b: b"L4KX" + b[4:],  # magic
        lambda b: b[:4] + b"\x03" + b[5:],  # format version
        lambda b: b[:5] + b"\x01" + b[6:],  # backend byte (authenticated)
        lambda b: b[:8] + bytes([b[8] ^ 1]) + b[9:],  # generation (authenticated)
    ],
)
def test_damaged_file_is_detected_not_loaded(tmp_path: Path, kek: bytearray, damage) -> None:
    path = tmp_path / "keys.bin"
    file_store(path, kek).save(keyset(4), 2)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StoreError):
        file_store(path, kek).load()


def test_wrong_kek_is_detected(tmp_path: Path, kek: bytearray) -> None:
    path = tmp_path / "keys.bin"
    file_store(path, kek).save(keyset(5), 2)
    with pytest.raises(StoreError):
        file_store(path, bytearray(32)).load()


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_crash_at_any_step_leaves_old_or_new_state(tmp_path: Path, kek: bytearray, step: str) -> None:
    path = tmp_path / "keys.bin"
    old, new = keyset(6), keyset(7)[:3]
    file_store(path, kek).save(old, 8)

    def crash_at(name: str) -> None:
        if name == step:
            raise SimulatedCrash(name)

    with pytest.raises(SimulatedCrash):
        file_store(path, kek, crash_at).save(new, 9)

    after = file_store(path, kek).load()  # "reboot": a fresh instance reads the disk
    if WRITE_STEPS.index(step) < WRITE_STEPS.index("renamed"):
        assert same(after.keys, old) and after.next_key_id == 8
    else:
        assert same(after.keys, new) and after.next_key_id == 9
    # and the store keeps working (a stale .tmp from the crash is replaced)
    file_store(path, kek).save(new, 10)
    assert file_store(path, kek).load().next_key_id == 10
    assert not (tmp_path / "keys.bin.tmp").exists()


def test_failed_write_raises_store_error_and_keeps_old_state(tmp_path: Path, kek: bytearray) -> None:
    path = tmp_path / "keys.bin"
    old = keyset(8)
    file_store(path, kek).save(old, 3)

    def disk_full(name: str) -> None:
        if name == "written":
            raise OSError(28, "No space left on device")

    with pytest.raises(StoreError):
        file_store(path, kek, disk_full).save(keyset(9), 4)
    assert not (tmp_path / "keys.bin.tmp").exists()
    assert same(file_store(path, kek).load().keys, old)


def test_stale_garbage_tmp_is_ignored(tmp_path: Path, kek: bytearray) -> None:
    path = tmp_path / "keys.bin"
    (tmp_path / "keys.bin.tmp").write_bytes(b"half a write")
    assert file_store(path, kek).load()[:2] == ([], 1)  # never written: empty store
    file_store(path, kek).save(keyset(10), 2)
    assert len(file_store(path, kek).load().keys) == len(keyset(10))


def write_kek(tmp_path: Path, data: bytes) -> str:
    kek_file = tmp_path / "kek.bin"
    kek_file.write_bytes(data)
    return str(kek_file)


def test_open_keystore_selects_backends(tmp_path: Path) -> None:
    assert isinstance(open_keystore(None), MemoryKeyStore)
    assert isinstance(open_keystore({"backend": "memory"}), MemoryKeyStore)
    cfg = {"backend": "file", "path": str(tmp_path / "k.bin"), "kek_file": write_kek(tmp_path, bytes(range(32)))}
    store = open_keystore(cfg)
    assert isinstance(store, FileKeyStore) and store.path == tmp_path / "k.bin"


@pytest.mark.parametrize(
    "cfg",
    [
        {"backend": "file", "path": "/nonexistent/x"},  # no kek_file
        {"backend": "file", "kek_file": "KEK"},  # no path
        {"backend": "file", "path": "p", "kek_file": "KEK", "extra": 1},
        {"backend": "memory", "path": "p"},
        {"backend": "tpm"},
        {"backend": "cloud"},
        {},
    ],
)
def test_open_keystore_is_strict(tmp_path: Path, cfg: dict) -> None:
    cfg = {k: (write_kek(tmp_path, bytes(32)) if v == "KEK" else v) for k, v in cfg.items()}
    with pytest.raises(ValueError):
        open_keystore(cfg)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_kek_file_must_be_32_bytes(tmp_path: Path, size: int) -> None:
    cfg = {"backend": "file", "path": str(tmp_path / "k.bin"), "kek_file": write_kek(tmp_path, bytes(size))}
    with pytest.raises(ValueError):
        open_keystore(cfg)


def test_service_keys_survive_a_restart_from_config(tmp_path: Path) -> None:
    config = {
        "storage": {"backend": "file", "path": str(tmp_path / "keys.bin"),
                    "kek_file": write_kek(tmp_path, os.urandom(32))},
        "rate_limit": {"enabled": False},
    }
    first = CryptoService(config, clock=lambda: 0)
    status, created = p.parse_response(first.handle(p.KeyGenerateRequest(0, KeyType.AES_256).encode()),
                                       p.RequestType.KEY_GENERATE)
    assert status == p.Status.SUCCESS
    kid = created.info.key_id
    status, sealed = p.parse_response(first.handle(p.AesEncryptRequest(kid, b"a", b"kept").encode()),
                                      p.RequestType.AES_ENCRYPT)
    del first  # no clean shutdown

    second = CryptoService(config, clock=lambda: 0)
    req = p.AesDecryptRequest(kid, b"a", sealed.nonce, sealed.ciphertext, sealed.tag)
    assert p.parse_response(second.handle(req.encode()), req.TYPE) == (p.Status.SUCCESS, p.AesDecryptResponse(b"kept"))


def test_version_1_store_files_still_load_and_are_upgraded(tmp_path: Path, kek: bytearray) -> None:
    """The File backend keeps working unchanged for stores written before the generation field."""
    import struct

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from tasks.crypto_service.keystore import serialize

    keys = keyset(11)
    header = struct.pack("<4sB3x12s", b"L4KS", 1, bytes(range(12)))
    image = serialize(keys, 5)
    path = tmp_path / "keys.bin"
    path.write_bytes(header + AESGCM(bytes(kek)).encrypt(header[8:], bytes(image), header))
    store = file_store(path, kek)
    loaded = store.load()
    assert same(loaded.keys, keys) and loaded.next_key_id == 5
    store.save(loaded.keys, 6)
    assert path.read_bytes()[4] == 2 and file_store(path, kek).load().next_key_id == 6
