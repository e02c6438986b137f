"""Wycheproof vectors run THROUGH THE WIRE: import the key with KEY_IMPORT, then operate,
all via CryptoService.handle. Every vector in each file is run; those the protocol cannot
express (AES-128/192 keys, non-96-bit IVs, ML-DSA contexts > 255 bytes) are checked to be
refused at the boundary instead, and counted."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from protocols import crypto as p
from protocols.crypto import KeyFormat, KeyType, Status, Usage

KEM_TYPES = {"512": KeyType.MLKEM_512, "768": KeyType.MLKEM_768, "1024": KeyType.MLKEM_1024}
DSA_TYPES = {"44": KeyType.MLDSA_44, "65": KeyType.MLDSA_65, "87": KeyType.MLDSA_87}


def import_key(h: Any, key_type: KeyType, usage: Usage, fmt: KeyFormat, material: bytes) -> tuple[Status, Any]:
    return h.call(p.KeyImportRequest(0, key_type, usage | Usage.DESTROY, fmt, material))


def test_aes_gcm_decryption_vectors(harness: Any, wycheproof: Any) -> None:
    data = wycheproof("aes_gcm_test.json")
    outcome: Counter[str] = Counter()
    for group in data["testGroups"]:
        for t in group["tests"]:
            key, iv, tag = (bytes.fromhex(t[f]) for f in ("key", "iv", "tag"))
            aad, msg, ct = (bytes.fromhex(t[f]) for f in ("aad", "msg", "ct"))
            valid = t["result"] == "valid"
            status, created = import_key(harness, KeyType.AES_256, Usage.DECRYPT, KeyFormat.SECRET, key)
            if len(key) != 32:
                assert status == Status.INVALID_PAYLOAD, t["tcId"]  # AES-256 only
                outcome["refused: key size"] += 1
                continue
            assert status == Status.SUCCESS, t["tcId"]
            kid = created.info.key_id
            if len(iv) != 12 or len(tag) != 16:
                with pytest.raises(ValueError):  # 96-bit nonce and 128-bit tag are fixed on the wire
                    p.AesDecryptRequest(kid, aad, iv, ct, tag)
                outcome["refused: iv/tag size"] += 1
            else:
                status, body = harness.call(p.AesDecryptRequest(kid, aad, iv, ct, tag))
                if valid:
                    assert (status, body.plaintext) == (Status.SUCCESS, msg), t["tcId"]
                else:
                    assert status == Status.DECRYPTION_FAILED, t["tcId"]
                outcome[f"wire: {t['result']}"] += 1
            harness.ok(p.KeyDestroyRequest(kid))
    assert sum(outcome.values()) == data["numberOfTests"]
    assert outcome["wire: valid"] > 0 and outcome["wire: invalid"] > 0, outcome


@pytest.mark.parametrize("size", sorted(KEM_TYPES))
def test_mlkem_decapsulation_vectors(memory_harness: Any, wycheproof: Any, size: str) -> None:
    harness = memory_harness
    data = wycheproof(f"mlkem_{size}_test.json")
    key_type = KEM_TYPES[size]
    outcome: Counter[str] = Counter()
    for group in data["testGroups"]:
        for t in group["tests"]:
            seed, c = bytes.fromhex(t["seed"]), bytes.fromhex(t["c"])
            valid = t["result"] == "valid"
            status, created = import_key(
                harness, key_type, Usage.DECAPS | Usage.EXPORT_PUBLIC, KeyFormat.SECRET, seed
            )
            if status != Status.SUCCESS:
                assert status == Status.INVALID_PAYLOAD and not valid, t["tcId"]
                outcome["refused at import"] += 1
                continue
            kid = created.info.key_id
            assert created.public_key == bytes.fromhex(t["ek"]), t["tcId"]
            assert harness.ok(p.KeyExportPublicRequest(kid)).public_key == created.public_key
            status, body = harness.call(p.MlkemDecapsRequest(kid, c))
            if valid:  # includes implicit-rejection ("Strcmp") vectors, which are valid
                assert (status, body.shared_secret) == (Status.SUCCESS, bytes.fromhex(t["K"])), t["tcId"]
                outcome["wire: valid"] += 1
            else:
                assert status == Status.INVALID_PAYLOAD, t["tcId"]
                outcome["wire: invalid"] += 1
            harness.ok(p.KeyDestroyRequest(kid))
    assert sum(outcome.values()) == data["numberOfTests"]
    assert outcome["wire: valid"] > 0 and outcome["refused at import"] > 0, outcome


@pytest.mark.parametrize("level", sorted(DSA_TYPES))
def test_mldsa_verification_vectors(memory_harness: Any, wycheproof: Any, level: str) -> None:
    harness = memory_harness
    data = wycheproof(f"mldsa_{level}_verify_test.json")
    key_type = DSA_TYPES[level]
    outcome: Counter[str] = Counter()
    for group in data["testGroups"]:
        status, created = import_key(
            harness, key_type, Usage.VERIFY, KeyFormat.PUBLIC, bytes.fromhex(group["publicKey"])
        )
        if status != Status.SUCCESS:
            assert status == Status.INVALID_PAYLOAD
            assert all(t["result"] == "invalid" for t in group["tests"])
            outcome["refused: public key"] += len(group["tests"])
            continue
        kid = created.info.key_id
        for t in group["tests"]:
            msg, sig, ctx = bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"]), bytes.fromhex(t.get("ctx", ""))
            valid = t["result"] == "valid"
            if len(ctx) > p.MAX_CONTEXT:
                assert not valid, t["tcId"]
                with pytest.raises(ValueError):  # FIPS 204 ctx <= 255 cannot be encoded
                    p.MldsaVerifyRequest(kid, ctx, sig, msg)
                outcome["refused: context"] += 1
                continue
            status, _ = harness.call(p.MldsaVerifyRequest(kid, ctx, sig, msg))
            assert status == (Status.SUCCESS if valid else Status.INVALID_SIGNATURE), t["tcId"]
            outcome[f"wire: {t['result']}"] += 1
        harness.ok(p.KeyDestroyRequest(kid))
    assert sum(outcome.values()) == data["numberOfTests"]
    assert outcome["wire: valid"] > 0 and outcome["wire: invalid"] > 0, outcome
