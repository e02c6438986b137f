"""est_service's sealed state at every crash point (issue 16 item 4) and its degraded modes at
start (item 5): stale temporary files, a KEK of the wrong length, a required state missing."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import pytest

from durable.faults import FaultyOps, SimulatedCrash, crash_points, finish
from tasks.est_service.config import Config
from tasks.est_service.csr import generate_key
from tasks.est_service.store import Persisted, Store
from tasks.est_service.task import start_store


def fingerprint(state: Persisted | None) -> Any:
    if state is None:
        return None
    pending = state.pending.key.private_numbers().private_value if state.pending else None
    return (state.key.private_numbers().private_value if state.key else "no key", pending)


def sweep(tmp_path: Path, prepare, new: Persisted) -> int:
    """Every crash point and every failure of ``Store.save(new)`` over the files ``prepare`` made."""
    base = tmp_path / "base"
    base.mkdir()
    prepare(base)
    old = fingerprint(Store(base).load())
    clean = FaultyOps()
    d = tmp_path / "clean"
    shutil.copytree(base, d)
    Store(d, ops=clean).save(new)
    assert fingerprint(Store(d).load()) == fingerprint(new) != old
    runs = 0
    for k, mode in crash_points(clean.log):
        d = tmp_path / f"{k}-{mode}"
        shutil.copytree(base, d)
        ops = FaultyOps(crash_at=k, torn=mode == "torn")
        with pytest.raises(SimulatedCrash):
            Store(d, ops=ops).save(new)
            raise SimulatedCrash("after the last operation")
        finish(ops, mode)
        restarted = Store(d)
        restarted.clean_temps()
        assert fingerprint(restarted.load()) in (old, fingerprint(new)), (k, mode, clean.log[k:k + 1])
        assert not list(d.glob("*.tmp")) and not list(d.glob(".*.tmp"))
        if k == len(clean.log) and mode == "crash":
            assert fingerprint(restarted.load()) == fingerprint(new)
        runs += 1
    for k in range(len(clean.log)):
        d = tmp_path / f"fail-{k}"
        shutil.copytree(base, d)
        try:
            Store(d, ops=FaultyOps(fail_at=k)).save(new)
        except OSError:
            assert fingerprint(Store(d).load()) == old, clean.log[k]  # reported failed: unchanged
        else:
            assert fingerprint(Store(d).load()) == fingerprint(new), clean.log[k]
        runs += 1
    return runs


def test_first_save_creating_the_kek_at_every_crash_point(tmp_path: Path) -> None:
    assert sweep(tmp_path, lambda d: None, Persisted(generate_key())) > 20


def test_replacing_the_state_with_a_pending_request_at_every_crash_point(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from tasks.est_service.csr import build_csr
    from tasks.est_service.renewal import Action
    from tasks.est_service.store import Pending

    new_key = generate_key()
    csr = build_csr(new_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]), ())
    new = Persisted(generate_key(), pending=Pending(Action.ENROLL, new_key, csr))
    assert sweep(tmp_path, lambda d: Store(d).save(Persisted(generate_key())), new) > 15


def test_a_full_disk_fails_the_save_and_space_coming_back_is_enough(tmp_path: Path) -> None:
    first = Persisted(generate_key())
    Store(tmp_path).save(first)
    ops = FaultyOps(full=True)
    store = Store(tmp_path, ops=ops)
    with pytest.raises(OSError) as err:
        store.save(Persisted(generate_key()))
    assert err.value.errno == errno.ENOSPC and fingerprint(Store(tmp_path).load()) == fingerprint(first)
    ops.full = False
    second = Persisted(generate_key())
    store.save(second)
    assert fingerprint(Store(tmp_path).load()) == fingerprint(second)


class Env:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)


def cfg(**extra: Any) -> Config:
    return Config.parse({"server": {"endpoint": "127.0.0.1:8443"}, **extra})


def test_start_removes_stale_temps_of_the_state_and_the_kek(tmp_path: Path) -> None:
    Store(tmp_path).save(Persisted(generate_key()))
    for name in (".est-kek.bin.123-abc.tmp", ".est-state.json.9-ff.tmp", "est-state.sealed.tmp"):
        (tmp_path / name).write_bytes(bytes(32))
    env = Env()
    assert start_store(env, cfg(), Store(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["est-kek.bin", "est-state.sealed"]
    assert any("removed 3 temporary file(s) left by a crash" in line for line in env.lines)


def test_a_kek_of_the_wrong_length_refuses_to_start_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "est-kek.bin").write_bytes(bytes(31))
    env = Env()
    assert not start_store(env, cfg(), Store(tmp_path))
    assert any("est-kek.bin holds 31 byte(s)" in line and "exactly 32 bytes" in line and "refusing" in line
               for line in env.lines), env.lines


def test_a_required_state_that_is_missing_refuses_to_start(tmp_path: Path) -> None:
    env = Env()
    assert not start_store(env, cfg(store={"required": True}), Store(tmp_path))
    assert any("MISSING" in line and "store.required" in line for line in env.lines)
    assert start_store(Env(), cfg(), Store(tmp_path))  # not required: a first start
    Store(tmp_path).save(Persisted(generate_key()))
    assert start_store(Env(), cfg(store={"required": True}), Store(tmp_path))


def test_store_config_is_strict() -> None:
    from tasks.est_service.config import ConfigError

    bad: object
    for bad in ({"required": "yes"}, {"must": True}, []):
        with pytest.raises(ConfigError, match="store"):
            cfg(store=bad)
