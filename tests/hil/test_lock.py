"""The lock file and the verified download cache (hil/qemu/lock.py, fetch.py), with fake apt-get/pip."""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from hil.qemu import fetch, initramfs, lock
from hil.qemu.errors import HarnessError


def test_the_repository_lock_pins_kernel_debs_and_wheels_with_hashes():
    pinned = lock.load()
    assert pinned.debs[0].package == pinned.kernel.package
    assert pinned.kernel.release in pinned.kernel.package
    names = {d.package for d in pinned.debs}
    assert {"busybox-static", "python3.11-minimal", "libc6", "libssl3"} <= names
    assert {"cryptography", "PyYAML", "pytest", "pexpect"} <= {w.name for w in pinned.wheels}
    for item in (*pinned.debs, *pinned.wheels):
        assert len(item.sha256) == 64 and item.version in item.filename.replace("%3a", ":")
    assert lock.parse(pinned.to_json()) == pinned  # round trip


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d.pop("kernel"), "kernel"),
    (lambda d: d["debs"][1].update(sha256="abc"), "debs[1].sha256"),
    (lambda d: d["wheels"][0].pop("version"), "wheels[0].version"),
    (lambda d: d.update(format=99), "format"),
    (lambda d: d.update(source_date_epoch="yesterday"), "source_date_epoch"),
])
def test_a_broken_lock_names_the_file_and_the_field(mutate, where):
    doc = json.loads(lock.LOCK_PATH.read_text())
    mutate(doc)
    with pytest.raises(HarnessError) as err:
        lock.parse(json.dumps(doc), Path("hil/qemu/lock.json"))
    assert err.value.reference == "lock-invalid"
    assert f"hil/qemu/lock.json: {where}" in err.value.message
    assert lock.UPDATE_COMMAND in err.value.hint


def fake_tools(tmp_path: Path, monkeypatch, apt_script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text("#!/bin/sh\n" + apt_script)
    apt.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def deb(content: bytes, name: str = "tool") -> lock.Deb:
    return lock.Deb(name, "arm64", "1.0-1", f"{name}_1.0-1_arm64.deb", hashlib.sha256(content).hexdigest())


def test_cached_debs_are_verified_on_every_use_and_refetched_when_wrong(tmp_path, monkeypatch):
    good = b"the real package"
    pinned = deb(good)
    # apt-get download writes the good bytes and logs that it ran
    fake_tools(tmp_path, monkeypatch, f"echo ran >> {tmp_path}/apt.log\nprintf '{good.decode()}' > {pinned.filename}\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / pinned.filename).write_bytes(b"tampered, same name")
    assert fetch.ensure_debs([pinned], cache, log=lambda _: None) == [cache / pinned.filename]
    assert (cache / pinned.filename).read_bytes() == good  # the name alone was not trusted
    assert (tmp_path / "apt.log").read_text() == "ran\n"
    fetch.ensure_debs([pinned], cache, log=lambda _: None)  # verified again, no download
    assert (tmp_path / "apt.log").read_text() == "ran\n"


def test_a_download_with_the_wrong_hash_fails(tmp_path, monkeypatch):
    pinned = deb(b"expected")
    fake_tools(tmp_path, monkeypatch, f"printf 'something else' > {pinned.filename}\n")
    with pytest.raises(HarnessError) as err:
        fetch.ensure_debs([pinned], tmp_path / "cache", log=lambda _: None)
    assert err.value.reference == "deb-hash-mismatch" and pinned.sha256 in err.value.message
    assert not (tmp_path / "cache" / pinned.filename).exists()


def test_a_version_the_archive_no_longer_serves_fails_with_the_update_command(tmp_path, monkeypatch):
    pinned = deb(b"old")
    fake_tools(tmp_path, monkeypatch, "echo \"E: Version '1.0-1' for 'tool' was not found\" >&2; exit 100\n")
    with pytest.raises(HarnessError) as err:
        fetch.ensure_debs([pinned], tmp_path / "cache", log=lambda _: None)
    assert err.value.reference == "lock-version-gone"
    assert "tool=1.0-1" in err.value.message
    assert "l4emu hil lock" in err.value.hint


def test_cpio_archives_are_reproducible(tmp_path):
    """Same tree, different mtimes and creation order: byte-identical archives, every mtime the epoch."""
    def tree(root: Path, order: list[str], mtime: int) -> None:
        for name in order:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
            os.utime(path, (mtime, mtime))

    a, b = tmp_path / "a", tmp_path / "b"
    tree(a, ["x/1", "x/2", "y"], 1_000)
    tree(b, ["y", "x/2", "x/1"], 2_000_000)
    archives = []
    for root in (a, b):
        out = io.BytesIO()
        writer = initramfs.CpioWriter(out, mtime=1_700_000_000)
        writer.add_tree(root)
        writer.finish()
        archives.append(out.getvalue())
    assert archives[0] == archives[1]
    mtimes = {archives[0][i + 6 + 8 * 5:i + 6 + 8 * 6] for i in range(len(archives[0]))
              if archives[0][i:i + 6] == b"070701"}
    assert mtimes == {b"%08X" % 1_700_000_000}


def test_source_date_epoch_from_the_environment_wins(monkeypatch):
    from hil.qemu.build import source_date_epoch

    pinned = lock.load()
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch(pinned) == pinned.source_date_epoch
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert source_date_epoch(pinned) == 1234
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    with pytest.raises(HarnessError):
        source_date_epoch(pinned)
