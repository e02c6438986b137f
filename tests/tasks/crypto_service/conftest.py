"""Fixtures for the crypto service tests: fake clock, deterministic RNGs, a service harness,
the Wycheproof vectors, and the three key-storage backends with their devices.

``harness`` / ``make_harness`` are parametrised over the delivery's backends (File, TPM
through a swtpm started for the test, HSM through a fresh SoftHSM2 token), so every test
that uses them runs once per backend.

Everything the tests need is a fixture (no helper imports), so the suite works under both
``--import-mode=prepend`` and ``--import-mode=importlib``."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from protocols import crypto as p
from tasks.crypto_service.keystore import MemoryKeyStore
from tasks.crypto_service.service import CryptoService

#: Project Wycheproof vectors, kept in the repository (tests/vectors/wycheproof/README.md)
REPO_ROOT = Path(__file__).resolve().parents[3]
WYCHEPROOF = REPO_ROOT / "tests" / "vectors" / "wycheproof"


class FakeClock:
    """Integer nanoseconds that only move when a test says so."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.now = start_ns

    def __call__(self) -> int:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += int(ms * 1_000_000)


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    r = random.Random(seed)
    return r.randbytes


class RecordingRng:
    """os.urandom-like, deterministic, remembering every output (to hunt for leaks)."""

    def __init__(self, seed: int = 7) -> None:
        self._r = random.Random(seed)
        self.outputs: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = self._r.randbytes(n)
        self.outputs.append(out)
        return out


@dataclass
class Harness:
    service: CryptoService
    clock: FakeClock
    store: Any
    frames: list[bytes] = field(default_factory=list)

    def raw(self, frame: bytes, client: Any = 0) -> bytes:
        out = self.service.handle(frame, client=client)
        self.frames.append(out)
        return out

    def call(self, request: Any, client: Any = 0) -> tuple[p.Status | int, Any]:
        return p.parse_response(self.raw(request.encode(), client), request.TYPE)

    def ok(self, request: Any) -> Any:
        status, body = self.call(request)
        assert status == p.Status.SUCCESS, f"{request.TYPE.name} -> {status!r}"
        return body

    def new_key(self, key_type: p.KeyType, usage: int = 0, key_id: int = 0) -> p.KeyResponse:
        return self.ok(p.KeyGenerateRequest(key_id, key_type, p.Usage(usage)))


def build_harness(config: dict[str, Any] | None = None, *, rng: Any = None, store: Any = None,
                  log: Any = None) -> Harness:
    """A service with a memory store, rate limit off unless given, fake clock, seeded RNG."""
    config = dict(config or {})
    config.setdefault("rate_limit", {"enabled": False})
    clock = FakeClock()
    store = store if store is not None else MemoryKeyStore()
    service = CryptoService(config, store=store, clock=clock, rng=rng or seeded_rng(1), log=log)
    return Harness(service, clock, store)


# --------------------------------------------------------------------------- key-storage backends

BACKENDS = ("file", "tpm", "hsm")
_tokens = itertools.count(1)


class Devices:
    """Starts a swtpm / makes a SoftHSM2 token on first use by a test."""

    def __init__(self, tmp_path: Path, softhsm_conf: Path) -> None:
        self.tmp_path, self.softhsm_conf = tmp_path, softhsm_conf
        self.swtpm: Any = None
        self.token: tuple[str, str] | None = None

    def tpm(self) -> Any:
        if self.swtpm is None:
            from kernel_model.host.keystore_devices import Swtpm

            self.swtpm = Swtpm(self.tmp_path / "swtpm-state")
            self.swtpm.start()
        return self.swtpm

    def hsm(self) -> tuple[str, str]:
        if self.token is None:
            from kernel_model.host.keystore_devices import init_softhsm_token

            label, pin = f"t{os.getpid()}-{next(_tokens)}", "1234"
            init_softhsm_token(self.softhsm_conf, label, pin, so_pin="12345678")
            self.token = (label, pin)
        return self.token

    def close(self) -> None:
        if self.swtpm is not None:
            from tasks.crypto_service import keystore_tpm

            esapi = keystore_tpm._CONNECTIONS.pop(self.swtpm.tcti, None)
            if esapi is not None:
                esapi.close()
            self.swtpm.close()


@dataclass
class StoreFactory:
    """``factory(name="keys.store", **kw)``: a store of this backend over files in tmp_path.
    Calling it again with the same name is a restart (a new instance over the same files)."""

    backend: str
    tmp_path: Path
    devices: Devices

    def config(self, name: str = "keys.store", **kw: Any) -> dict[str, Any]:
        path = str(self.tmp_path / name)
        if self.backend == "file":
            kek = self.tmp_path / "kek.bin"
            if not kek.exists():
                kek.write_bytes(seeded_rng(99)(32))
            cfg = {"backend": "file", "path": path, "kek_file": str(kek)}
        elif self.backend == "tpm":
            cfg = {"backend": "tpm", "path": path, "tcti": self.devices.tpm().tcti}
        else:
            label, pin = self.devices.hsm()
            pin_file = self.tmp_path / "hsm.pin"
            pin_file.write_text(pin)
            cfg = {"backend": "hsm", "path": path, "module": "/usr/lib/softhsm/libsofthsm2.so",
                   "token_label": label, "pin_file": str(pin_file), "softhsm2_conf": str(self.devices.softhsm_conf)}
        return {**cfg, **kw}

    def __call__(self, name: str = "keys.store", ops: Any = None, **kw: Any) -> Any:
        from durable.fileops import OS
        from tasks.crypto_service.backends import open_keystore

        return open_keystore(self.config(name, **kw), seeded_rng(5), ops=ops or OS)


@pytest.fixture(scope="session")
def softhsm_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kernel_model.host.keystore_devices import write_softhsm_conf

    return write_softhsm_conf(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture
def devices(tmp_path: Path, softhsm_conf: Path) -> Any:
    d = Devices(tmp_path, softhsm_conf)
    yield d
    d.close()


@pytest.fixture(params=BACKENDS)
def key_backend(request: pytest.FixtureRequest, tmp_path: Path, devices: Devices) -> StoreFactory:
    """One of the delivery's three key-storage backends (the test runs once per backend)."""
    return StoreFactory(request.param, tmp_path, devices)


@pytest.fixture
def make_harness(key_backend: StoreFactory) -> Callable[..., Harness]:
    """``make_harness(config=None, *, rng=None, store=None) -> Harness``, by default over a
    fresh store of the test's backend."""

    def make(config: dict[str, Any] | None = None, *, rng: Any = None, store: Any = None, log: Any = None) -> Harness:
        return build_harness(config, rng=rng, store=store if store is not None else key_backend(), log=log)

    return make


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


@pytest.fixture
def memory_harness() -> Harness:
    """Over the memory store, once: for tests of algorithms whose keys live in process memory
    on every backend (ML-DSA, ML-KEM); persisting them is what the parametrised suite covers."""
    return build_harness()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recording_rng() -> RecordingRng:
    return RecordingRng()


@pytest.fixture
def wycheproof() -> Callable[[str], dict[str, Any]]:
    """``wycheproof("aes_gcm_test.json") -> parsed JSON``; fails (not skips) if absent."""
    import json

    def load(name: str) -> dict[str, Any]:
        path = WYCHEPROOF / name
        if not path.exists():
            pytest.fail(f"test vectors missing: {path} (they belong in the repository)")
        return json.loads(path.read_text())

    return load
