"""CryptoService.handle end to end (bytes in, bytes out): every status, every operation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from protocols import crypto as p
from protocols.crypto import KeyFormat, KeyType, RequestType, Status, Usage
from tasks.crypto_service import service as service_module
from tasks.crypto_service.keys import Key
from tasks.crypto_service.keystore import MemoryKeyStore
from tasks.crypto_service.nonces import COUNTER_LIMIT
from tasks.crypto_service.service import CryptoService, ServiceConfig

DSA = [KeyType.MLDSA_44, KeyType.MLDSA_65, KeyType.MLDSA_87]
KEM = [KeyType.MLKEM_512, KeyType.MLKEM_768, KeyType.MLKEM_1024]


def status_of(frame: bytes) -> int:
    assert frame[:2] == b"\xc8\x01" and frame[3] == 0
    assert int.from_bytes(frame[4:8], "little") == len(frame) - 8
    return frame[2]


def hdr(rtype: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return bytes([0xC7, 1, rtype, 0]) + n.to_bytes(4, "little") + payload


# --------------------------------------------------------------------------- every status code
# Each scenario builds what it needs on a fresh harness and returns the response frame.


def s_success(h: Any) -> bytes:
    return h.raw(p.KeyGenerateRequest(0, KeyType.AES_256).encode())


def s_invalid_header(h: Any) -> bytes:
    return h.raw(bytes(8))


def s_invalid_type(h: Any) -> bytes:
    return h.raw(hdr(0x03, bytes(4)))


def s_invalid_payload(h: Any) -> bytes:
    return h.raw(hdr(RequestType.KEY_DESTROY, bytes(3)))


def s_key_not_found(h: Any) -> bytes:
    return h.raw(p.AesEncryptRequest(999, b"", b"x").encode())


def s_crypto_error(h: Any) -> bytes:
    # a key whose nonce counters are used up (as loaded from a store)
    key = Key.generate(1, KeyType.AES_256, Usage(0), h.service._rng)
    key.nonce_lease = COUNTER_LIMIT
    store = MemoryKeyStore()
    store.save([key], 2)
    h2 = type(h)(CryptoService({"rate_limit": {"enabled": False}}, store=store, clock=h.clock), h.clock, store)
    return h2.raw(p.AesEncryptRequest(1, b"", b"x").encode())


def s_decryption_failed(h: Any) -> bytes:
    kid = h.new_key(KeyType.AES_256).info.key_id
    enc = h.ok(p.AesEncryptRequest(kid, b"", b"secret"))
    bad_tag = bytes([enc.tag[0] ^ 1]) + enc.tag[1:]
    return h.raw(p.AesDecryptRequest(kid, b"", enc.nonce, enc.ciphertext, bad_tag).encode())


def s_rate_limited(h: Any) -> bytes:
    svc = CryptoService({}, store=MemoryKeyStore(), clock=h.clock, rng=h.service._rng)
    for _ in range(100):
        assert status_of(svc.handle(p.KeyListRequest().encode())) == Status.SUCCESS
    return svc.handle(p.KeyListRequest().encode())


def s_nonce_reuse(h: Any) -> bytes:
    kid = h.new_key(KeyType.AES_256).info.key_id
    enc = h.ok(p.AesEncryptRequest(kid, b"", b"once"))
    replay = p.AesDecryptRequest(kid, b"", enc.nonce, enc.ciphertext, enc.tag).encode()
    assert status_of(h.raw(replay)) == Status.SUCCESS
    return h.raw(replay)


def s_payload_too_large(h: Any) -> bytes:
    return h.raw(hdr(RequestType.AES_ENCRYPT, b"", length=65537))


def s_policy_denied(h: Any) -> bytes:
    kid = h.new_key(KeyType.AES_256, Usage.ENCRYPT).info.key_id
    return h.raw(p.AesDecryptRequest(kid, b"", bytes(12), b"", bytes(16)).encode())


def s_import_disabled(h: Any) -> bytes:
    service = CryptoService({"allow_import": False, "rate_limit": {"enabled": False}}, store=MemoryKeyStore())
    h2 = type(h)(service, h.clock, None)
    return h2.raw(p.KeyImportRequest(0, KeyType.AES_256, Usage(0), KeyFormat.SECRET, bytes(32)).encode())


def s_invalid_signature(h: Any) -> bytes:
    kid = h.new_key(KeyType.MLDSA_44).info.key_id
    sig = h.ok(p.MldsaSignRequest(kid, b"", b"message")).signature
    return h.raw(p.MldsaVerifyRequest(kid, b"", sig, b"messagE").encode())


def s_wrong_key_type(h: Any) -> bytes:
    kid = h.new_key(KeyType.MLDSA_65).info.key_id
    return h.raw(p.AesEncryptRequest(kid, b"", b"x").encode())


def s_key_exists(h: Any) -> bytes:
    h.new_key(KeyType.AES_256, key_id=42)
    return h.raw(p.KeyGenerateRequest(42, KeyType.AES_256).encode())


def s_storage_error(h: Any) -> bytes:
    class FailingStore(MemoryKeyStore):
        def save(self, keys: Any, next_key_id: int) -> None:
            raise OSError("disk gone")

    h2 = type(h)(CryptoService({"rate_limit": {"enabled": False}}, store=FailingStore()), h.clock, None)
    return h2.raw(p.KeyGenerateRequest(0, KeyType.AES_256).encode())


def s_internal_error(h: Any) -> bytes:
    def broken_rng(n: int) -> bytes:
        raise RuntimeError("entropy source failed")

    h.service._rng = broken_rng  # (an ML-DSA seed is drawn by the service on every backend)
    return h.raw(p.KeyGenerateRequest(0, KeyType.MLDSA_44).encode())


STATUS_SCENARIOS: list[tuple[Status, Callable[[Any], bytes]]] = [
    (Status.SUCCESS, s_success),
    (Status.INVALID_HEADER, s_invalid_header),
    (Status.INVALID_TYPE, s_invalid_type),
    (Status.INVALID_PAYLOAD, s_invalid_payload),
    (Status.KEY_NOT_FOUND, s_key_not_found),
    (Status.CRYPTO_ERROR, s_crypto_error),
    (Status.DECRYPTION_FAILED, s_decryption_failed),
    (Status.RATE_LIMITED, s_rate_limited),
    (Status.NONCE_REUSE, s_nonce_reuse),
    (Status.PAYLOAD_TOO_LARGE, s_payload_too_large),
    (Status.POLICY_DENIED, s_policy_denied),
    (Status.IMPORT_DISABLED, s_import_disabled),
    (Status.INVALID_SIGNATURE, s_invalid_signature),
    (Status.WRONG_KEY_TYPE, s_wrong_key_type),
    (Status.KEY_EXISTS, s_key_exists),
    (Status.STORAGE_ERROR, s_storage_error),
    (Status.INTERNAL_ERROR, s_internal_error),
]


def test_every_status_code_has_a_scenario() -> None:
    assert [s for s, _ in STATUS_SCENARIOS] == list(Status)


@pytest.mark.parametrize("expected,scenario", STATUS_SCENARIOS, ids=[s.name for s, _ in STATUS_SCENARIOS])
def test_status_is_provoked_through_handle(harness: Any, expected: Status, scenario: Callable[[Any], bytes]) -> None:
    frame = scenario(harness)
    assert status_of(frame) == expected
    if expected != Status.SUCCESS:
        assert len(frame) == 8  # error responses carry no payload


# --------------------------------------------------------------------------- AES-256-GCM


def test_aes_round_trip_with_aad(harness: Any) -> None:
    kid = harness.new_key(KeyType.AES_256).info.key_id
    enc = harness.ok(p.AesEncryptRequest(kid, b"header", b"plaintext"))
    assert len(enc.ciphertext) == len(b"plaintext") and len(enc.tag) == 16
    wrong_aad = p.AesDecryptRequest(kid, b"headeR", enc.nonce, enc.ciphertext, enc.tag)
    assert harness.call(wrong_aad)[0] == Status.DECRYPTION_FAILED
    # a failed decrypt does not record the nonce: the genuine one still works once
    right = p.AesDecryptRequest(kid, b"header", enc.nonce, enc.ciphertext, enc.tag)
    assert harness.ok(right).plaintext == b"plaintext"
    assert harness.call(right)[0] == Status.NONCE_REUSE


@pytest.mark.parametrize("aad_len", [0, 1, 1000, 65502])
def test_encrypt_refuses_what_decrypt_could_not_take_exact_boundary(harness: Any, aad_len: int) -> None:
    """A + P <= 65502: the decrypt request (34 + A + P bytes) must fit in 64 KiB too."""
    kid = harness.new_key(KeyType.AES_256).info.key_id
    aad = bytes(range(256)) * (aad_len // 256) + bytes(aad_len % 256)
    plain = b"\x5a" * (p.MAX_AAD_AND_PLAINTEXT - aad_len)
    assert p.MAX_AAD_AND_PLAINTEXT == 65502
    enc = harness.ok(p.AesEncryptRequest(kid, aad, plain))  # largest that fits
    back = p.AesDecryptRequest(kid, aad, enc.nonce, enc.ciphertext, enc.tag)
    assert len(back.encode()) == 8 + 65536  # exactly the limit
    assert harness.ok(back).plaintext == plain
    assert harness.call(p.AesEncryptRequest(kid, aad, plain + b"x"))[0] == Status.PAYLOAD_TOO_LARGE
    if aad_len:  # one more AAD byte, one less plaintext byte would fit; one more of each would not
        assert harness.call(p.AesEncryptRequest(kid, aad + b"a", plain))[0] == Status.PAYLOAD_TOO_LARGE


def test_every_encrypt_that_succeeds_can_be_decrypted_near_the_limit(harness: Any) -> None:
    kid = harness.new_key(KeyType.AES_256).info.key_id
    for aad_len, plain_len in [(0, 65508), (0, 65503), (6, 65497), (2, 65500), (100, 65402), (0, 65502)]:
        status, enc = harness.call(p.AesEncryptRequest(kid, bytes(aad_len), bytes(plain_len)))
        if aad_len + plain_len > 65502:
            assert status == Status.PAYLOAD_TOO_LARGE, (aad_len, plain_len)
            continue
        assert status == Status.SUCCESS
        dec = p.AesDecryptRequest(kid, bytes(aad_len), enc.nonce, enc.ciphertext, enc.tag)
        assert harness.call(dec)[0] == Status.SUCCESS, (aad_len, plain_len)


def test_encrypt_nonces_are_unique_and_leases_persisted(make_harness: Any) -> None:
    h = make_harness({"nonce_lease_block": 7})
    saves = []
    original = h.store.save

    def save(keys: Any, nxt: int) -> None:
        saves.append(nxt)
        return original(keys, nxt)

    h.store.save = save
    kid = h.new_key(KeyType.AES_256).info.key_id
    saves.clear()
    seen = {h.ok(p.AesEncryptRequest(kid, b"", b"x")).nonce for _ in range(50)}
    assert len(seen) == 50
    assert len(saves) == 8  # ceil(50 / 7) lease writes
    assert h.store.load().keys[0].nonce_lease == 56


def test_nonces_never_repeat_across_a_restart_even_with_a_stuck_rng(make_harness: Any) -> None:
    stuck = lambda n: b"\x42" * n  # noqa: E731 - the salt is identical on both runs
    h1 = make_harness({"nonce_lease_block": 16}, rng=stuck)
    kid = h1.new_key(KeyType.AES_256).info.key_id
    first = [h1.ok(p.AesEncryptRequest(kid, b"", b"m")).nonce for _ in range(20)]
    h2 = make_harness({"nonce_lease_block": 16}, rng=stuck, store=h1.store)  # restart, no clean shutdown
    second = [h2.ok(p.AesEncryptRequest(kid, b"", b"m")).nonce for _ in range(20)]
    assert len(set(first) | set(second)) == 40


def test_rotation_resets_the_nonce_tracker(make_harness: Any) -> None:
    # NONCE_REUSE is checked before the tag: the old ciphertext reaching DECRYPTION_FAILED
    # after the rotation shows the replay window was reset (a kept window would say NONCE_REUSE).
    h = make_harness()
    kid = h.new_key(KeyType.AES_256).info.key_id
    enc = h.ok(p.AesEncryptRequest(kid, b"", b"m"))
    dec = p.AesDecryptRequest(kid, b"", enc.nonce, enc.ciphertext, enc.tag)
    assert h.call(dec)[0] == Status.SUCCESS
    assert h.call(dec)[0] == Status.NONCE_REUSE
    rotated = h.ok(p.KeyRotateRequest(kid))
    assert rotated.info.version == 2
    assert h.call(dec)[0] == Status.DECRYPTION_FAILED  # tracker reset on rotation
    assert h.ok(p.AesEncryptRequest(kid, b"", b"m")).nonce[4:] == bytes(8)  # counter restarted too


def test_rotated_key_no_longer_decrypts_old_ciphertext(harness: Any) -> None:
    kid = harness.new_key(KeyType.AES_256).info.key_id
    enc = harness.ok(p.AesEncryptRequest(kid, b"", b"m"))
    harness.ok(p.KeyRotateRequest(kid))
    old = p.AesDecryptRequest(kid, b"", enc.nonce, enc.ciphertext, enc.tag)
    assert harness.call(old)[0] == Status.DECRYPTION_FAILED


def test_rate_limited_requests_do_no_crypto(make_harness: Any) -> None:
    h = make_harness({"rate_limit": {"burst": 2}})
    kid = h.new_key(KeyType.AES_256).info.key_id  # token 1
    first = h.ok(p.AesEncryptRequest(kid, b"", b"m"))  # token 2
    assert h.call(p.AesEncryptRequest(kid, b"", b"m"))[0] == Status.RATE_LIMITED
    h.clock.advance_ms(100)
    after = h.ok(p.AesEncryptRequest(kid, b"", b"m"))
    # the limited request consumed no nonce: counters are consecutive
    assert int.from_bytes(after.nonce[4:], "big") == int.from_bytes(first.nonce[4:], "big") + 1


def test_rate_limit_is_per_client(make_harness: Any) -> None:
    h = make_harness({"rate_limit": {"burst": 3}})
    for _ in range(3):
        assert status_of(h.raw(p.KeyListRequest().encode(), client="gateway")) == Status.SUCCESS
    assert status_of(h.raw(p.KeyListRequest().encode(), client="gateway")) == Status.RATE_LIMITED
    assert status_of(h.raw(p.KeyListRequest().encode(), client="logger")) == Status.SUCCESS


# --------------------------------------------------------------------------- ML-DSA


@pytest.mark.parametrize("key_type", DSA)
def test_mldsa_sign_verify_with_context(harness: Any, key_type: KeyType) -> None:
    created = harness.new_key(key_type)
    kid = created.info.key_id
    sig = harness.ok(p.MldsaSignRequest(kid, b"ctx", b"firmware image")).signature
    assert harness.call(p.MldsaVerifyRequest(kid, b"ctx", sig, b"firmware image"))[0] == Status.SUCCESS
    assert harness.call(p.MldsaVerifyRequest(kid, b"xtc", sig, b"firmware image"))[0] == Status.INVALID_SIGNATURE
    assert harness.call(p.MldsaVerifyRequest(kid, b"ctx", sig[:-1], b"firmware image"))[0] == Status.INVALID_SIGNATURE
    # a verifier that only has the public key
    pub = harness.ok(p.KeyImportRequest(0, key_type, Usage(0), KeyFormat.PUBLIC, created.public_key))
    assert pub.info.flags == 0 and pub.info.usage == Usage.VERIFY | Usage.EXPORT_PUBLIC | Usage.DESTROY
    assert harness.call(p.MldsaVerifyRequest(pub.info.key_id, b"ctx", sig, b"firmware image"))[0] == Status.SUCCESS
    assert harness.call(p.MldsaSignRequest(pub.info.key_id, b"", b"m"))[0] == Status.POLICY_DENIED


# --------------------------------------------------------------------------- ML-KEM


@pytest.mark.parametrize("key_type", KEM)
def test_mlkem_keygen_encaps_decaps(harness: Any, key_type: KeyType) -> None:
    created = harness.ok(p.MlkemKeygenRequest(0, key_type))
    kid = created.info.key_id
    assert harness.ok(p.KeyExportPublicRequest(kid)).public_key == created.public_key
    enc = harness.ok(p.MlkemEncapsRequest(kid))
    assert harness.ok(p.MlkemDecapsRequest(kid, enc.ciphertext)).shared_secret == enc.shared_secret
    assert harness.call(p.MlkemDecapsRequest(kid, enc.ciphertext + b"\x00"))[0] == Status.INVALID_PAYLOAD
    # encapsulate to a peer's public key imported as public-only, decapsulate with the pair
    peer = harness.ok(p.KeyImportRequest(0, key_type, Usage(0), KeyFormat.PUBLIC, created.public_key))
    enc2 = harness.ok(p.MlkemEncapsRequest(peer.info.key_id))
    assert harness.ok(p.MlkemDecapsRequest(kid, enc2.ciphertext)).shared_secret == enc2.shared_secret
    assert harness.call(p.MlkemDecapsRequest(peer.info.key_id, enc2.ciphertext))[0] == Status.POLICY_DENIED


def test_mlkem_keygen_refuses_other_types(harness: Any) -> None:
    assert harness.call(p.MlkemKeygenRequest(0, KeyType.MLDSA_44))[0] == Status.WRONG_KEY_TYPE


# --------------------------------------------------------------------------- key management


def test_ids_are_allocated_and_never_reused(harness: Any) -> None:
    a = harness.new_key(KeyType.AES_256).info.key_id
    b = harness.new_key(KeyType.AES_256).info.key_id
    harness.ok(p.KeyDestroyRequest(b))
    c = harness.new_key(KeyType.AES_256).info.key_id
    assert (a, b, c) == (1, 2, 3)
    assert harness.new_key(KeyType.AES_256, key_id=0xFFFF_FFFF).info.key_id == 0xFFFF_FFFF


def test_destroy_zeroizes_and_forgets(harness: Any) -> None:
    kid = harness.new_key(KeyType.MLKEM_768).info.key_id
    secret = harness.service._keys[kid].storage_material()[1]
    assert any(secret)
    assert harness.ok(p.KeyDestroyRequest(kid)) == p.EmptyResponse()
    assert secret == bytearray(len(secret))
    assert harness.call(p.MlkemEncapsRequest(kid))[0] == Status.KEY_NOT_FOUND
    assert harness.store.load().keys == []


def test_policy_governs_lifecycle_too(harness: Any) -> None:
    kid = harness.new_key(KeyType.MLDSA_44, Usage.SIGN | Usage.VERIFY).info.key_id
    for req in (p.KeyDestroyRequest(kid), p.KeyRotateRequest(kid), p.KeyExportPublicRequest(kid)):
        assert harness.call(req)[0] == Status.POLICY_DENIED
    aes = harness.new_key(KeyType.AES_256).info.key_id
    assert harness.call(p.KeyExportPublicRequest(aes))[0] == Status.WRONG_KEY_TYPE


@pytest.mark.parametrize(
    "request_obj",
    [
        p.KeyGenerateRequest(0, KeyType.AES_256, Usage.SIGN),
        p.KeyImportRequest(0, KeyType.AES_256, Usage(0), KeyFormat.SECRET, bytes(16)),
        p.KeyImportRequest(0, KeyType.AES_256, Usage(0), KeyFormat.PUBLIC, bytes(32)),
        p.KeyImportRequest(0, KeyType.MLKEM_768, Usage(0), KeyFormat.PUBLIC, b"\xff" * 1184),
        p.KeyImportRequest(0, KeyType.MLDSA_87, Usage.ROTATE, KeyFormat.PUBLIC, bytes(2592)),
    ],
)
def test_bad_creation_requests_are_invalid_payload(harness: Any, request_obj: Any) -> None:
    assert harness.call(request_obj)[0] == Status.INVALID_PAYLOAD
    assert harness.ok(p.KeyListRequest()).keys == ()


def test_public_import_switch(make_harness: Any) -> None:
    h = make_harness({"allow_import": True, "allow_public_import": False})
    public = p.KeyImportRequest(0, KeyType.MLKEM_512, Usage(0), KeyFormat.PUBLIC, bytes(800))
    assert h.call(public)[0] == Status.IMPORT_DISABLED
    assert h.call(p.KeyImportRequest(0, KeyType.AES_256, Usage(0), KeyFormat.SECRET, bytes(32)))[0] == Status.SUCCESS


def test_failed_persist_rolls_everything_back(harness: Any) -> None:
    kid = harness.new_key(KeyType.AES_256).info.key_id

    def fail(keys: Any, nxt: int) -> None:
        raise OSError("read-only")

    harness.store.save = fail
    assert harness.call(p.KeyDestroyRequest(kid))[0] == Status.STORAGE_ERROR
    assert harness.call(p.KeyRotateRequest(kid))[0] == Status.STORAGE_ERROR
    assert harness.call(p.KeyGenerateRequest(0, KeyType.AES_256))[0] == Status.STORAGE_ERROR
    assert harness.call(p.AesEncryptRequest(kid, b"", b"m"))[0] == Status.STORAGE_ERROR  # lease not durable
    assert [k.key_id for k in harness.ok(p.KeyListRequest()).keys] == [kid]
    assert harness.service._keys[kid].version == 1


def test_key_store_capacity(make_harness: Any) -> None:
    h = make_harness({"max_keys": 2})
    h.new_key(KeyType.AES_256)
    h.new_key(KeyType.AES_256)
    assert h.call(p.KeyGenerateRequest(0, KeyType.AES_256))[0] == Status.STORAGE_ERROR


def test_key_list_pages(harness: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(service_module, "KEY_LIST_PAGE", 2)
    ids = [harness.new_key(KeyType.AES_256).info.key_id for _ in range(5)]
    pages, cursor = [], 0
    while True:
        page = harness.ok(p.KeyListRequest(cursor))
        pages.append([k.key_id for k in page.keys])
        cursor = page.next_cursor
        if not cursor:
            break
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]


def test_no_response_ever_contains_secret_material(make_harness: Any, recording_rng: Any) -> None:
    h = make_harness(rng=recording_rng)
    for t in KeyType:
        kid = h.new_key(t).info.key_id
        if t is KeyType.AES_256:
            enc = h.ok(p.AesEncryptRequest(kid, b"a", b"p"))
            h.ok(p.AesDecryptRequest(kid, b"a", enc.nonce, enc.ciphertext, enc.tag))
        elif t in DSA:
            h.ok(p.MldsaSignRequest(kid, b"", b"m"))
            h.ok(p.KeyExportPublicRequest(kid))
        else:
            enc = h.ok(p.MlkemEncapsRequest(kid))
            h.ok(p.MlkemDecapsRequest(kid, enc.ciphertext))
            h.ok(p.KeyExportPublicRequest(kid))
        h.ok(p.KeyRotateRequest(kid))
    h.ok(p.KeyListRequest())
    secrets = [o for o in recording_rng.outputs if len(o) in (32, 64)]  # AES keys and seeds
    assert len(secrets) >= 2 * (len(KeyType) - 1)  # (the HSM makes AES keys inside the token)
    wire = b"".join(h.frames)
    for secret in secrets:
        assert secret[:16] not in wire and secret[-16:] not in wire


def test_close_zeroizes_memory(harness: Any) -> None:
    kid = harness.new_key(KeyType.MLDSA_65).info.key_id
    secret = harness.service._keys[kid].storage_material()[1]
    harness.service.close()
    assert secret == bytearray(32)
    assert harness.call(p.KeyListRequest())[1].keys == ()


def test_handle_accepts_any_byte_buffer_and_survives_non_buffers(harness: Any) -> None:
    frame = p.KeyListRequest().encode()
    assert status_of(harness.service.handle(bytearray(frame))) == Status.SUCCESS
    assert status_of(harness.service.handle(memoryview(frame))) == Status.SUCCESS
    assert status_of(harness.service.handle("not bytes")) == Status.INVALID_HEADER


@pytest.mark.parametrize(
    "raw",
    [
        {"allow_imports": True},
        {"allow_import": "yes"},
        {"max_keys": 0},
        {"replay_window": True},
        {"replay_fp_rate": 2.0},
        {"storage": "file"},
        {"rate_limit": {"rate": 1}},
    ],
)
def test_config_is_strict(raw: dict) -> None:
    with pytest.raises(ValueError):
        ServiceConfig.from_dict(raw)


def test_config_defaults_match_wvds() -> None:
    cfg = ServiceConfig.from_dict({})
    assert (cfg.replay_window, cfg.rate_limit.rate_per_s, cfg.rate_limit.burst, cfg.rate_limit.cooldown_ms) == (
        1_000_000,
        1000,
        100,
        100,
    )


# --------------------------------------------------------------------------- per-client allowlist: order of checks


def allowlisted(**rate: Any) -> CryptoService:
    config = {"rate_limit": rate or {"enabled": False}}
    return CryptoService(config, store=MemoryKeyStore(), clock=lambda: 0,
                         allowed=frozenset({RequestType.KEY_LIST, RequestType.AES_DECRYPT}))


@pytest.mark.parametrize(
    "frame,expected",
    [
        (bytes([0xC7, 1, RequestType.AES_ENCRYPT, 1]) + (7).to_bytes(4, "little") + bytes(7), Status.INVALID_HEADER),
        (bytes([0xC6]) + p.AesEncryptRequest(7, b"", b"x").encode()[1:], Status.INVALID_HEADER),
        (bytes([0xC7, 1, 0x7F, 0]) + bytes(4), Status.INVALID_TYPE),
        (hdr(RequestType.AES_ENCRYPT, b"", length=65537), Status.PAYLOAD_TOO_LARGE),
        (hdr(RequestType.AES_ENCRYPT, bytes(3)), Status.INVALID_PAYLOAD),
        (p.AesEncryptRequest(7, b"", b"x").encode(), Status.POLICY_DENIED),
        (p.KeyListRequest(0).encode(), Status.SUCCESS),
    ],
)
def test_allowlist_answers_after_the_header_size_and_layout_checks(frame: bytes, expected: Status) -> None:
    assert status_of(allowlisted().handle(frame)) == expected


def test_the_rate_limiter_counts_requests_the_allowlist_refuses() -> None:
    svc = allowlisted(burst=100)
    denied = p.KeyGenerateRequest(0, KeyType.AES_256).encode()  # not on the list
    statuses = [status_of(svc.handle(denied)) for _ in range(500)]
    assert statuses[:100] == [Status.POLICY_DENIED] * 100
    assert set(statuses[100:]) == {Status.RATE_LIMITED}
    assert status_of(svc.handle(p.KeyListRequest(0).encode())) == Status.RATE_LIMITED  # same bucket
