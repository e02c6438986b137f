"""Every durable write of the crypto service at every crash point (issue 16 item 4), failures
kept local (item 2), degraded modes (item 5) and request/response pairing (item 6).

The store, its generation witness, the nonce leases (a store write before a nonce is used) and
the replay journal all write through ``durable.FileOps``. For each scenario a clean run counts
its file operations; then the scenario runs once per crash point (a kill before each operation,
a torn write, a power cut) on a ``FaultyOps``, a new service is started over the same files
(the restart) and the result must be the old or the new state, never a broken one, with nothing
the client was given lost (a nonce handed out is never handed out again; a plaintext handed out
is never decrypted again). Then once per operation with an injected failure: the answer the
client got and what a restart finds must agree.
"""
from __future__ import annotations

import errno
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from durable.faults import FaultyOps, SimulatedCrash, crash_points, finish
from durable.fileops import OS
from protocols import crypto as p
from protocols.crypto import KeyFormat, KeyType, Status, Usage
from protocols.crypto_client import CryptoClient
from tasks.crypto_service.keystore import FileKeyStore, StoreError
from tasks.crypto_service.service import CryptoService

KEY = bytes(range(32))
KEK = bytes(range(100, 132))


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    def has(self, *words: str) -> bool:
        return any(all(w in line for w in words) for line in self)


def open_service(directory: Path, ops: Any = OS, log: Any = None, **config: Any) -> CryptoService:
    config.setdefault("rate_limit", {"enabled": False})
    store = FileKeyStore(directory / "keys.store", bytearray(KEK), random.Random(5).randbytes, ops=ops)
    return CryptoService(config, store=store, clock=lambda: 0, rng=random.Random(1).randbytes, log=log)


def call(svc: CryptoService, request: Any) -> tuple[Any, Any]:
    return p.parse_response(svc.handle(request.encode()), request.TYPE)


def keys(svc: CryptoService) -> list[tuple[int, int]]:
    status, body = call(svc, p.KeyListRequest(0))
    assert status == Status.SUCCESS, status
    return sorted((k.key_id, k.version) for k in body.keys)


def decrypt(enc: Any) -> p.AesDecryptRequest:
    return p.AesDecryptRequest(7, b"", enc.nonce, enc.ciphertext, enc.tag)


CONFIG = {"nonce_lease_block": 1, "replay_window": 2}  # a lease write per encrypt; compaction early


def baseline(directory: Path) -> dict[str, Any]:
    """Files with key 7 (AES) and key 8, five ciphertexts of key 7 not yet decrypted."""
    svc = open_service(directory, **CONFIG)
    assert call(svc, p.KeyImportRequest(7, KeyType.AES_256, Usage(0), KeyFormat.SECRET, KEY))[0] == Status.SUCCESS
    assert call(svc, p.KeyImportRequest(8, KeyType.AES_256, Usage(0), KeyFormat.SECRET, KEY[::-1]))[0] == Status.SUCCESS
    encs = [call(svc, p.AesEncryptRequest(7, b"", b"m%d" % i))[1] for i in range(5)]
    svc.close()
    return {"encs": encs}


# Each scenario: (act, check). ``act(svc, ctx, given)`` does the writes, appending to ``given``
# what the client was handed; ``check(restarted, ctx, given)`` asserts nothing handed out is lost.
def act_generate(svc: CryptoService, ctx: dict, given: list) -> None:
    status, body = call(svc, p.KeyGenerateRequest(20, KeyType.AES_256))
    given.append(status)


def act_destroy(svc: CryptoService, ctx: dict, given: list) -> None:
    given.append(call(svc, p.KeyDestroyRequest(8))[0])


def act_rotate(svc: CryptoService, ctx: dict, given: list) -> None:
    given.append(call(svc, p.KeyRotateRequest(7))[0])


def act_encrypt_leases(svc: CryptoService, ctx: dict, given: list) -> None:
    for i in range(2):
        status, body = call(svc, p.AesEncryptRequest(7, b"", b"lease %d" % i))
        if status == Status.SUCCESS:
            given.append(body.nonce)


def act_decrypt_journal(svc: CryptoService, ctx: dict, given: list) -> None:
    for enc in ctx["encs"]:  # window 2: the fifth append compacts the journal to the last two
        status, body = call(svc, decrypt(enc))
        if status == Status.SUCCESS:
            given.append(enc)


def check_nothing(restarted: CryptoService, ctx: dict, given: list) -> None:
    return None


def check_nonces_never_repeat(restarted: CryptoService, ctx: dict, given: list) -> None:
    later = [call(restarted, p.AesEncryptRequest(7, b"", b"after"))[1].nonce for _ in range(3)]
    assert not set(later) & set(given), "a nonce handed out before the crash was handed out again"


def check_plaintext_never_twice(restarted: CryptoService, ctx: dict, given: list) -> None:
    # the journal keeps the last `window` (2) records: the last plaintext handed out, and at most
    # one record whose plaintext was not handed out (the crash came first)
    if given:
        assert call(restarted, decrypt(given[-1]))[0] == Status.NONCE_REUSE


SCENARIOS: dict[str, tuple[Callable, Callable]] = {
    "generate": (act_generate, check_nothing),
    "destroy": (act_destroy, check_nothing),
    "rotate": (act_rotate, check_nothing),
    "nonce leases": (act_encrypt_leases, check_nonces_never_repeat),
    "replay journal": (act_decrypt_journal, check_plaintext_never_twice),
}


def run_scenario(tmp_path: Path, name: str) -> tuple[int, int]:
    """Every crash point and every injected failure of one scenario; (crash runs, failure runs)."""
    act, check = SCENARIOS[name]
    base = tmp_path / "base"
    base.mkdir()
    ctx = baseline(base)

    def fresh(tag: str) -> Path:
        d = tmp_path / tag
        shutil.copytree(base, d)
        return d

    before = keys(open_service(fresh("before"), **CONFIG))
    clean = FaultyOps()
    d = fresh("clean")
    svc = open_service(d, clean, **CONFIG)
    clean.log.clear()  # count the scenario's operations, not the start-up's
    act(svc, ctx, [])
    log = list(clean.log)
    assert log, "the scenario writes nothing"
    after = keys(open_service(d, **CONFIG))
    assert after != before or name in ("nonce leases", "replay journal")

    crashes = 0
    for k, mode in crash_points(log):
        d = fresh(f"crash-{k}-{mode}")
        ops = FaultyOps()
        svc = open_service(d, ops, **CONFIG)
        ops.log.clear()
        ops.crash_at, ops.torn = k, mode == "torn"
        given: list = []
        try:
            act(svc, ctx, given)
        except SimulatedCrash:
            pass
        finish(ops, mode)
        restarted = open_service(d, **CONFIG)  # the restart: a new process over the same files
        assert restarted.store_error is None, (name, k, mode, restarted.store_error)
        assert keys(restarted) in (before, after), (name, k, mode)
        try:
            check(restarted, ctx, given)
        except AssertionError as exc:
            raise AssertionError(f"{name}: crash at operation {k} ({log[k] if k < len(log) else 'end'}, {mode})"
                                 ) from exc
        shutil.rmtree(d)
        crashes += 1

    failures = 0
    for k in range(len(log)):
        d = fresh(f"fail-{k}")
        ops = FaultyOps()
        log_lines = Log()
        svc = open_service(d, ops, log_lines, **CONFIG)
        ops.log.clear()
        ops.fail_at = k
        given = []
        act(svc, ctx, given)
        in_memory = keys(svc)
        restarted = open_service(d, **CONFIG)
        assert restarted.store_error is None, (name, k)
        on_disk = keys(restarted)
        assert on_disk == in_memory, (name, k, log[k])  # what the client was told is what is on disk
        if name in ("generate", "destroy", "rotate"):
            expected = after if all(s == Status.SUCCESS for s in given) else before
            assert on_disk == expected, (name, k, log[k], given)
            if any(s == Status.STORAGE_ERROR for s in given):
                assert log_lines.has("STORAGE"), (name, k)
        check(restarted, ctx, given)
        shutil.rmtree(d)
        failures += 1
    return crashes, failures


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_crash_point_of_every_store_write(tmp_path: Path, name: str) -> None:
    crashes, failures = run_scenario(tmp_path, name)
    assert crashes >= 10 and failures >= 5


def durable_state_checks(tmp_path: Path) -> dict[str, tuple[int, int]]:
    """For ``make reliability`` ("durable-state checks"): scenario -> (crash points, failures)."""
    out = {}
    for name in SCENARIOS:
        d = tmp_path / name.replace(" ", "_")
        d.mkdir()
        out[name] = run_scenario(d, name)
    return out


# --------------------------------------------------------------------------- degraded modes


def test_full_disk_answers_storage_error_logs_and_recovers_without_restart(tmp_path: Path) -> None:
    baseline(tmp_path)
    ops, log = FaultyOps(), Log()
    svc = open_service(tmp_path, ops, log, **CONFIG)
    ops.full = True
    assert call(svc, p.KeyGenerateRequest(21, KeyType.AES_256))[0] == Status.STORAGE_ERROR
    assert call(svc, p.AesEncryptRequest(7, b"", b"needs a lease"))[0] == Status.STORAGE_ERROR
    assert call(svc, p.KeyDestroyRequest(8))[0] == Status.STORAGE_ERROR
    assert log.has("STORAGE", "No space left on device")
    assert keys(svc) == [(7, 1), (8, 1)]
    ops.full = False  # space comes back: the same process carries on
    assert call(svc, p.KeyGenerateRequest(21, KeyType.AES_256))[0] == Status.SUCCESS
    assert call(svc, p.AesEncryptRequest(7, b"", b"now"))[0] == Status.SUCCESS
    assert keys(open_service(tmp_path)) == [(7, 1), (8, 1), (21, 1)]


@pytest.mark.parametrize("restart_finds", ["no store", "a torn journal"])
def test_full_disk_at_start_is_retried_not_final(tmp_path: Path, restart_finds: str) -> None:
    """A restart on a full disk (a new store to create, a torn journal tail to repair): STORAGE_ERROR
    and a log line, then served once space returns, without another restart."""
    if restart_finds == "a torn journal":
        baseline(tmp_path)
        with open(tmp_path / "keys.store.replay", "ab") as f:
            f.write(b"torn")
    ops, log = FaultyOps(full=True), Log()
    svc = open_service(tmp_path, ops, log, store_retry_ms=1)
    assert call(svc, p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert log.has("STORAGE", "No space left on device", "will retry")
    ops.full = False
    svc._clock = lambda: 10**9  # the retry interval has passed (injected clock)
    assert keys(svc) == ([] if restart_finds == "no store" else [(7, 1), (8, 1)])


def test_missing_store_logs_a_distinct_line_and_required_refuses(tmp_path: Path) -> None:
    log = Log()
    (tmp_path / "a").mkdir()
    open_service(tmp_path / "a", OS, log)
    assert log.has("MISSING STORE", "created an empty one")
    healthy = Log()
    open_service(tmp_path / "a", OS, healthy)
    assert not healthy.has("MISSING")
    (tmp_path / "b").mkdir()
    store = FileKeyStore(tmp_path / "b" / "keys.store", bytearray(KEK), must_exist=True)
    refused = Log()
    svc = CryptoService({"rate_limit": {"enabled": False}}, store=store, log=refused)
    assert call(svc, p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert refused.has("does not exist", "refusing to start empty")
    assert not (tmp_path / "b" / "keys.store").exists()


def test_stale_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    baseline(tmp_path)
    for name in ("keys.store.tmp", "keys.store.gen.tmp", "keys.store.replay.tmp"):
        (tmp_path / name).write_bytes(b"half a store")
    log = Log()
    svc = open_service(tmp_path, OS, log)
    assert keys(svc) == [(7, 1), (8, 1)]
    assert not list(tmp_path.glob("*.tmp")) and log.has("removed 3 temporary file(s)")
    fresh, log = tmp_path / "fresh", Log()  # also when the store itself is missing (a crash before its first save)
    fresh.mkdir()
    (fresh / "keys.store.tmp").write_bytes(b"half a store")
    open_service(fresh, OS, log)
    assert log.has("removed 1 temporary file(s)", "keys.store.tmp") and not (fresh / "keys.store.tmp").exists()


# --------------------------------------------------------------------------- failures stay local


class FakeEnv:
    def __init__(self, kek: bytes) -> None:
        self.kek = kek
        self.lines: list[str] = []

    def rom(self, name: str) -> str:
        return name

    def dataspace_size(self, rom: str) -> int:
        return len(self.kek)

    def map_dataspace(self, rom: str) -> Any:
        kek = self.kek
        return type("M", (), {"read": lambda self, off, n: kek[off:off + n]})()

    def log(self, line: str) -> None:
        self.lines.append(line)


def test_one_damaged_store_fails_only_its_client(tmp_path: Path, monkeypatch: Any) -> None:
    from tasks.crypto_service import task

    monkeypatch.chdir(tmp_path)
    cfg = {"storage": {"backend": "file", "path": "keys.store", "kek_rom": "kek"}, "rate_limit": {"enabled": False}}
    clients = {"alice": {"gate": "a", "shm": "a_shm"}, "bob": {"gate": "b", "shm": "b_shm"}}
    env = FakeEnv(KEK)
    first = task.load_services(env, cfg, clients)
    assert any(line.startswith("[alice]") and "key store MISSING: started with an empty one" in line
               for line in env.lines), env.lines  # a first start does not look like a healthy boot
    assert not any("key store loaded" in line for line in env.lines)
    for svc in first.values():
        assert call(svc, p.KeyImportRequest(7, KeyType.AES_256, Usage(0), KeyFormat.SECRET, KEY))[0] == Status.SUCCESS
    damaged = bytearray((tmp_path / "keys.store.alice").read_bytes())
    damaged[40] ^= 1
    (tmp_path / "keys.store.alice").write_bytes(bytes(damaged))
    env = FakeEnv(KEK)
    services = task.load_services(env, cfg, clients)
    assert call(services["alice"], p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert keys(services["bob"]) == [(7, 1)]
    assert call(services["bob"], p.AesEncryptRequest(7, b"", b"served"))[0] == Status.SUCCESS
    assert any(line.startswith("[alice]") and "UNAVAILABLE" in line and "keys.store.alice" in line
               for line in env.lines), env.lines
    assert any(line.startswith("[bob]") and "key store loaded: 1 key(s)" in line for line in env.lines)


def test_a_store_that_cannot_even_be_opened_fails_only_its_client(tmp_path: Path, monkeypatch: Any) -> None:
    from tasks.crypto_service import task

    monkeypatch.chdir(tmp_path)
    real = task.open_keystore

    def broken_for_alice(storage: Any, *args: Any, **kw: Any) -> Any:
        if storage["path"].endswith(".alice"):
            raise RuntimeError("the device for alice is absent")
        return real(storage, *args, **kw)

    monkeypatch.setattr(task, "open_keystore", broken_for_alice)
    env = FakeEnv(KEK)
    cfg = {"storage": {"backend": "file", "path": "keys.store", "kek_rom": "kek"}, "rate_limit": {"enabled": False}}
    services = task.load_services(env, cfg, {"alice": {}, "bob": {}})
    assert call(services["alice"], p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert keys(services["bob"]) == []
    assert any("[alice]" in line and "the device for alice is absent" in line for line in env.lines)


def test_bad_kek_length_names_the_module_and_its_length(tmp_path: Path, monkeypatch: Any) -> None:
    from tasks.crypto_service import task

    monkeypatch.chdir(tmp_path)
    env = FakeEnv(KEK[:31])
    cfg = {"storage": {"backend": "file", "path": "keys.store", "kek_rom": "kek"}, "rate_limit": {"enabled": False}}
    services = task.load_services(env, cfg, {"alice": {}})
    assert call(services["alice"], p.KeyListRequest(0))[0] == Status.STORAGE_ERROR
    assert any("KEK boot module 'kek' holds 31 byte(s)" in line and "exactly 32 bytes" in line
               for line in env.lines), env.lines


# --------------------------------------------------------------------------- request/response pairing


def test_a_response_to_another_request_is_never_taken_as_the_answer() -> None:
    """A late response (the answer to the previous, timed-out request) arrives first: the client
    rejects it by its sequence number, sends again and reads the right answer."""
    svc = CryptoService({"rate_limit": {"enabled": False}}, clock=lambda: 0, rng=random.Random(3).randbytes)
    svc.handle(p.KeyImportRequest(7, KeyType.AES_256, Usage(0), KeyFormat.SECRET, KEY).encode())
    sent: list[bytes] = []
    late = [svc.handle(p.KeyListRequest(0).encode(seq=12345))]  # answered after its client gave up

    def transact(frame: bytes) -> bytes:
        sent.append(frame)
        if late:
            return late.pop()
        return svc.handle(frame)

    client = CryptoClient(transact, rng=random.Random(4).randbytes)
    sealed = client.encrypt(7, b"paired")  # a KEY_LIST answer would not parse as this one's
    assert len(sent) == 2 and p.request_sequence(sent[0]) != p.request_sequence(sent[1])
    assert client.decrypt(7, sealed.nonce, sealed.ciphertext, sealed.tag) == b"paired"


def test_a_zeroed_request_area_answer_is_not_taken_either() -> None:
    """The INVALID_HEADER answer to a request area cleared under the client's feet carries no
    sequence number: the client sends its request again instead of reporting INVALID_HEADER."""
    svc = CryptoService({"rate_limit": {"enabled": False}}, clock=lambda: 0, rng=random.Random(3).randbytes)
    calls = [0]

    def transact(frame: bytes) -> bytes:
        calls[0] += 1
        return svc.handle(bytes(len(frame)) if calls[0] == 1 else frame)

    assert CryptoClient(transact).list_keys() == [] and calls[0] == 2


def test_only_mismatched_responses_give_up_with_a_clear_error() -> None:
    stale = p.encode_response(Status.SUCCESS, p.KeyListResponse(0, ()), seq=999)
    client = CryptoClient(lambda frame: stale, rng=lambda n: bytes(n))
    with pytest.raises(p.ResponseError, match="answers another request"):
        client.list_keys()


def test_a_full_disk_error_is_transient(tmp_path: Path) -> None:
    ops = FaultyOps(full=True)
    store = FileKeyStore(tmp_path / "keys.store", bytearray(KEK), ops=ops)
    with pytest.raises(StoreError) as err:
        store.save([], 1)
    assert err.value.retry and err.value.__cause__.errno == errno.ENOSPC
