"""Key objects: types, policy, zeroization, rotation."""

from __future__ import annotations

import os
import random

import pytest

from protocols.crypto import KeyFlags, KeyFormat, KeyType, Usage
from tasks.crypto_service.keys import SPECS, Family, Key, KeyDestroyed


def seeded_rng(seed: int):
    """Deterministic stand-in for os.urandom."""
    return random.Random(seed).randbytes


PUBLIC_SIZES = {
    KeyType.AES_256: 0,
    KeyType.MLDSA_44: 1312,
    KeyType.MLDSA_65: 1952,
    KeyType.MLDSA_87: 2592,
    KeyType.MLKEM_512: 800,
    KeyType.MLKEM_768: 1184,
    KeyType.MLKEM_1024: 1568,
}  # FIPS 203 / 204 tables


@pytest.mark.parametrize("key_type", list(KeyType))
def test_generate_every_type(key_type: KeyType) -> None:
    key = Key.generate(1, key_type, Usage(0), os.urandom)
    assert len(key.public_key) == PUBLIC_SIZES[key_type]
    assert key.has_secret and key.info().flags == KeyFlags.HAS_SECRET
    assert key.usage == SPECS[key_type].private_usage  # 0 = everything allowed for the type
    assert key.info().version == 1


@pytest.mark.parametrize("key_type", [t for t in KeyType if t is not KeyType.AES_256])
def test_same_seed_same_public_key(key_type: KeyType) -> None:
    seed = seeded_rng(9)(SPECS[key_type].secret_size)
    a = Key.from_material(1, key_type, Usage(0), KeyFormat.SECRET, seed)
    b = Key.from_material(2, key_type, Usage(0), KeyFormat.SECRET, bytearray(seed))
    assert a.public_key == b.public_key
    pub = Key.from_material(3, key_type, Usage(0), KeyFormat.PUBLIC, a.public_key)
    assert not pub.has_secret and pub.usage == SPECS[key_type].public_usage


@pytest.mark.parametrize(
    "key_type,fmt,material,usage",
    [
        (KeyType.AES_256, KeyFormat.SECRET, bytes(31), 0),
        (KeyType.AES_256, KeyFormat.PUBLIC, bytes(32), 0),  # AES has no public form
        (KeyType.AES_256, KeyFormat.SECRET, bytes(32), Usage.SIGN),
        (KeyType.MLDSA_44, KeyFormat.SECRET, bytes(64), 0),
        (KeyType.MLDSA_44, KeyFormat.PUBLIC, bytes(1311), 0),
        (KeyType.MLDSA_65, KeyFormat.PUBLIC, bytes(1952), Usage.SIGN),  # public key cannot sign
        (KeyType.MLKEM_768, KeyFormat.SECRET, bytes(32), 0),
        (KeyType.MLKEM_768, KeyFormat.PUBLIC, b"\xff" * 1184, 0),  # fails the modulus check
        (KeyType.MLKEM_512, KeyFormat.PUBLIC, b"\xff" * 800, 0),
        (KeyType.MLKEM_1024, KeyFormat.PUBLIC, bytes(1568), Usage.ROTATE),
    ],
)
def test_bad_material_or_usage_is_refused(key_type: KeyType, fmt: KeyFormat, material: bytes, usage: int) -> None:
    with pytest.raises(ValueError):
        Key.from_material(1, key_type, Usage(usage), fmt, material)


def test_policy_bits() -> None:
    key = Key.generate(1, KeyType.AES_256, Usage.ENCRYPT, os.urandom)
    assert key.permits(Usage.ENCRYPT)
    assert not key.permits(Usage.DECRYPT)
    assert not key.permits(Usage.ENCRYPT | Usage.DECRYPT)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_zeroize_overwrites_the_secret_and_disables_the_key(key_type: KeyType) -> None:
    key = Key.generate(1, key_type, Usage(0), seeded_rng(3))
    fmt, secret = key.storage_material()
    assert fmt is KeyFormat.SECRET and any(secret)
    key.zeroize()
    assert secret == bytearray(len(secret))  # the very buffer the key held
    assert key.destroyed
    with pytest.raises(KeyDestroyed):
        if key.family is Family.AES:
            key.aead()
        elif key.family is Family.MLDSA:
            key.sign(b"m", b"")
        else:
            key.decapsulate(bytes(SPECS[key_type].out_size))


@pytest.mark.parametrize("key_type", list(KeyType))
def test_rotation_new_material_same_id_and_policy(key_type: KeyType) -> None:
    old = Key.generate(4, key_type, Usage(0), seeded_rng(1))
    old.nonce_lease = 12345
    new = old.rotated(seeded_rng(2))
    assert (new.key_id, new.key_type, new.usage, new.version) == (4, key_type, old.usage, 2)
    assert new.nonce_lease == 0
    assert bytes(new.storage_material()[1]) != bytes(old.storage_material()[1])


def test_public_only_key_cannot_rotate() -> None:
    pub = Key.generate(1, KeyType.MLDSA_44, Usage(0), os.urandom).public_key
    key = Key.from_material(2, KeyType.MLDSA_44, Usage(0), KeyFormat.PUBLIC, pub)
    with pytest.raises(ValueError):
        key.rotated(os.urandom)


def test_repr_shows_no_material() -> None:
    key = Key.generate(1, KeyType.AES_256, Usage(0), seeded_rng(5))
    secret = bytes(key.storage_material()[1])
    assert secret.hex() not in repr(key) and repr(secret) not in repr(key)


def test_mlkem512_backend_round_trip_and_length_checks() -> None:
    key = Key.generate(1, KeyType.MLKEM_512, Usage(0), os.urandom)
    shared, ct = key.encapsulate()
    assert len(ct) == 768 and key.decapsulate(ct) == shared
    with pytest.raises(ValueError):
        key.decapsulate(ct[:-1])
