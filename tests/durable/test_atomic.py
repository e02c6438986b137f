"""durable.atomic on durable.faults: every crash point of each write sequence leaves the old or
the new content, never a broken one; failures are reported exactly when nothing changed;
stale temporary files are removed."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from durable.atomic import append_record, atomic_write, clean_stale_temps, replace_file
from durable.faults import FaultyOps, SimulatedCrash, armed, crash_points, finish
from durable.sealed import AesSealer, KekError, SealedError, SealedFile, create_kek, read_kek

OLD, NEW = b"old content " * 50, b"the new content " * 70


def visible(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_replace_file_survives_every_crash_point(tmp_path: Path) -> None:
    clean = FaultyOps()
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "f").write_bytes(OLD)
    replace_file(tmp_path / "probe" / "f", NEW, ops=clean)
    assert [name for name, _ in clean.log] == ["unlink", "create", "write", "fsync", "close", "chmod", "rename",
                                               "fsync_dir"]
    points = crash_points(clean.log)
    assert len(points) == 2 * 9 + 1  # kill and power cut at 9 points, one torn write
    for k, mode in points:
        d = tmp_path / f"{mode}-{k}"
        d.mkdir()
        (d / "f").write_bytes(OLD)
        ops = armed(mode, k)
        with pytest.raises(SimulatedCrash):
            replace_file(d / "f", NEW, ops=ops)
            raise SimulatedCrash("after the last operation")
        finish(ops, mode)
        assert (d / "f").read_bytes() in (OLD, NEW), (k, mode)
        if mode == "power" and k < len(clean.log):  # a power cut before the directory fsync: the old file
            assert (d / "f").read_bytes() == OLD, (k, mode)
        clean_stale_temps(d, ["f"])
        assert sorted(visible(d)) == ["f"], (k, mode)
        if k == len(clean.log):  # every step done: the new content, whatever the crash
            assert (d / "f").read_bytes() == NEW


def test_replace_file_reports_failure_exactly_when_the_old_content_stays(tmp_path: Path) -> None:
    clean = FaultyOps()
    (tmp_path / "f").write_bytes(OLD)
    replace_file(tmp_path / "f", NEW, ops=clean)
    for k, (name, _) in enumerate(clean.log):
        (tmp_path / "f").write_bytes(OLD)
        ops = FaultyOps(fail_at=k, errno=errno.EIO)
        try:
            synced = replace_file(tmp_path / "f", NEW, ops=ops)
        except OSError:
            assert (tmp_path / "f").read_bytes() == OLD, name  # reported failed: nothing changed
        else:
            assert (tmp_path / "f").read_bytes() == NEW, name  # reported done: it is there
            assert synced  # one failed directory fsync is retried once
        assert sorted(visible(tmp_path)) == ["f"], name  # no temporary file left either way


def test_append_record_torn_tail_is_the_only_damage(tmp_path: Path) -> None:
    path = tmp_path / "j"
    for k, mode in crash_points([("write", ""), ("fdatasync", "")]):
        path.write_bytes(b"HEAD")
        ops = armed(mode, k)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            with pytest.raises(SimulatedCrash):
                append_record(fd, b"R" * 20, ops=ops)
                raise SimulatedCrash("after")
        finally:
            os.close(fd)
        finish(ops, mode)
        body = path.read_bytes()
        assert body.startswith(b"HEAD") and set(body[4:]) <= {ord("R")} and len(body) - 4 in (0, 10, 20)


def test_full_disk_fails_the_write_and_keeps_the_file_then_recovers(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(OLD)
    ops = FaultyOps(full=True)
    with pytest.raises(OSError) as err:
        replace_file(tmp_path / "f", NEW, ops=ops)
    assert err.value.errno == errno.ENOSPC and (tmp_path / "f").read_bytes() == OLD
    ops.full = False
    assert replace_file(tmp_path / "f", NEW, ops=ops) and (tmp_path / "f").read_bytes() == NEW


def test_stale_temps_of_both_kinds_are_removed_and_nothing_else(tmp_path: Path) -> None:
    for name in ("f", "f.tmp", ".f.123-abcdef.tmp", "g.tmp", "other"):
        (tmp_path / name).write_bytes(b"x")
    assert clean_stale_temps(tmp_path, ["f"]) == [".f.123-abcdef.tmp", "f.tmp"]
    assert sorted(visible(tmp_path)) == ["f", "g.tmp", "other"]


def test_atomic_write_uses_a_unique_temp_and_exact_mode(tmp_path: Path) -> None:
    ops = FaultyOps()
    atomic_write(tmp_path / "a", b"data", 0o640, ops=ops)
    created = [path for name, path in ops.log if name == "create"]
    assert len(created) == 1 and Path(created[0]).name.startswith(".a.") and created[0].endswith(".tmp")
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o640


def test_sealed_file_round_trip_tamper_and_kek_length(tmp_path: Path) -> None:
    kek = create_kek(tmp_path / "kek")
    assert (tmp_path / "kek").stat().st_mode & 0o777 == 0o600
    sealed = SealedFile(tmp_path / "s", b"TEST", what="test store")
    assert sealed.read(AesSealer(bytearray(kek))) is None
    sealed.write(AesSealer(bytearray(kek)), b"secret plaintext", 7, kind=3)
    opened = sealed.read(AesSealer(read_kek(tmp_path / "kek")))
    assert (opened.generation, opened.kind, bytes(opened.plaintext)) == (7, 3, b"secret plaintext")
    assert b"secret" not in (tmp_path / "s").read_bytes()
    raw = bytearray((tmp_path / "s").read_bytes())
    raw[9] ^= 1  # the generation is authenticated too
    (tmp_path / "s").write_bytes(bytes(raw))
    with pytest.raises(SealedError, match="wrong key-encryption key or the file was modified"):
        sealed.read(AesSealer(bytearray(kek)))
    (tmp_path / "short").write_bytes(bytes(31))
    with pytest.raises(KekError, match=r"holds 31 byte.*exactly 32 bytes"):
        read_kek(tmp_path / "short")
