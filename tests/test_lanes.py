"""The fast lane is honest: inside ``no_booting()`` nothing can start a process or a server, and
the classification sees the fixtures and files that boot. (tests/lanes.py)"""
from __future__ import annotations

import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import lanes


def test_no_booting_refuses_every_way_to_start_a_process_or_a_server():
    with lanes.no_booting():
        with pytest.raises(lanes.BootsInUnitLane, match=re.escape("subprocess.Popen._execute_child")):
            subprocess.run([sys.executable, "-c", "pass"], check=False)
        with pytest.raises(lanes.BootsInUnitLane, match=re.escape("os.posix_spawn")):
            os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], {})
        for fork, name in ((os.fork, "os.fork"), (lambda: pty.fork()[0], "pty.fork")):
            with pytest.raises(lanes.BootsInUnitLane, match=re.escape(name)):
                if fork() == 0:  # only if the guard failed: the child must not run the suite
                    os._exit(0)
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            with pytest.raises(lanes.BootsInUnitLane, match=re.escape("socket.socket.listen")):
                server.listen()
        a, b = socket.socketpair()  # in-process channels are not servers
        a.close()
        b.close()


def test_no_booting_puts_everything_back():
    before = (os.fork, os.posix_spawn, pty.fork, subprocess.Popen._execute_child, socket.socket.listen)
    with lanes.no_booting():
        assert os.posix_spawn is not before[1]
    assert (os.fork, os.posix_spawn, pty.fork, subprocess.Popen._execute_child, socket.socket.listen) == before


def test_record_mode_lets_it_happen_and_says_what():
    seen: list[str] = []
    with lanes.no_booting(seen.append), socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
    assert seen == ["socket.socket.listen"]


def _runs_openssl():
    return subprocess.run(["openssl", "version"], check=False)


def _serves_lazily():
    def later(ca):
        from hil.est_ca import serve
        return serve(ca)
    return later


def _pure():
    return sorted([3, 1, 2])


def _starts_a_tpm(devices, tmp_path):
    return devices.tpm()


def _item(path: str, fixtures=(), hil=False, params=None, function=_pure):
    return SimpleNamespace(path=lanes.TESTS / path, fixturenames=list(fixtures), function=function,
                           callspec=SimpleNamespace(params=params or {}),
                           get_closest_marker=lambda name: object() if (name == "hil" and hil) else None)


@pytest.mark.parametrize(("item", "expected"), [
    (_item("kernel_model/test_kernel.py"), False),
    (_item("capability_violations/test_kernel_rules.py", ["request", "boot"]), True),
    (_item("hil/est_ca/test_est_ca_enroll.py", ["tmp_path", "est_ca", "options", "running", "kit"]), True),
    (_item("hil/est_ca/test_est_ca_policy.py", ["tmp_path"]), False),
    (_item("system/test_hello.py"), True),
    (_item("l4emu/test_cli.py"), True),
    (_item("hil/test_lock.py", hil=True), True),
    (_item("test_docs.py"), True),
    (_item("test_layering.py"), False),
    (_item("tasks/crypto_service/test_crypto_service.py", ["harness", "key_backend"], params={"key_backend": "tpm"}),
     True),
    (_item("tasks/crypto_service/test_crypto_service.py", ["harness", "key_backend"], params={"key_backend": "file"}),
     False),
    (_item("tasks/est_service/test_est_csr.py", function=_runs_openssl), True),
    (_item("tasks/crypto_service/test_crypto_storage_backends.py", ["devices", "tmp_path"], function=_starts_a_tpm),
     True),
    (_item("hil/est_ca/test_est_ca_identity.py", function=_serves_lazily), True),
])
def test_classification(item, expected):
    assert lanes.boots(item) is expected


def test_the_booting_files_exist():
    for rel in lanes.BOOTING_FILES:
        assert (lanes.TESTS / rel).exists(), rel
    assert Path(lanes.__file__).parent == lanes.TESTS
