"""Fixtures for the crypto service tests: fake clock, deterministic RNGs, a service harness,
the Wycheproof vectors.

Everything the tests need is a fixture (no helper imports), so the suite works under both
``--import-mode=prepend`` and ``--import-mode=importlib``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from tasks.crypto_service import protocol as p
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


def build_harness(config: dict[str, Any] | None = None, *, rng: Any = None, store: Any = None) -> Harness:
    """A service with a memory store, rate limit off unless given, fake clock, seeded RNG."""
    config = dict(config or {})
    config.setdefault("rate_limit", {"enabled": False})
    clock = FakeClock()
    store = store if store is not None else MemoryKeyStore()
    service = CryptoService(config, store=store, clock=clock, rng=rng or seeded_rng(1))
    return Harness(service, clock, store)


@pytest.fixture
def make_harness() -> Callable[..., Harness]:
    """``make_harness(config=None, *, rng=None, store=None) -> Harness``."""
    return build_harness


@pytest.fixture
def harness() -> Harness:
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
