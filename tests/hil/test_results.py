"""Timeouts, JUnit per-test results, run records, the relay, the guest pool, concurrent refreshes."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hil.qemu import junit, relay
from hil.qemu.errors import HarnessError
from hil.qemu.timeouts import ENV, Timeouts, multiplier_from_env

JUNIT = b"""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.capability_violations.test_kernel_rules" name="test_v1_forged_selector[empty]" time="0.1"/>
<testcase classname="tests.tasks.runtime.test_confine.TestProbe" name="test_escape" time="1.5">
  <failure message="assert 1.2 &lt; 1.0">elapsed too long</failure></testcase>
<testcase classname="tests.x" name="test_skip" time="0"><skipped message="no seccomp"/></testcase>
<testcase classname="tests.x" name="test_err" time="0"><error message="fixture blew up">trace</error></testcase>
</testsuite></testsuites>"""


def test_every_layer_scales_with_one_multiplier():
    t = Timeouts(boot_s=100, command_s=600, inactivity_s=300, interrupt_s=10, poweroff_s=30, multiplier=3)
    assert (t.boot, t.command, t.inactivity, t.poweroff) == (300, 1800, 900, 90)
    # the in-guest pytest per-test timeout fits inside the command budget, the host's outside everything
    assert t.guest_pytest_timeout(600) < t.command
    assert t.host_test_timeout(600, boots=1) > t.boot + t.command + t.poweroff
    assert multiplier_from_env(environ={ENV: "2.5"}) == 2.5 and multiplier_from_env(environ={}) == 1.0
    for bad in ("0", "-1", "fast"):
        with pytest.raises(ValueError):
            multiplier_from_env(environ={ENV: bad})


def test_junit_node_ids_map_to_pytest_classnames():
    assert junit.node_key("tests/capability_violations/test_kernel_rules.py::test_v1_forged_selector[empty]") == \
        ("tests.capability_violations.test_kernel_rules", "test_v1_forged_selector[empty]")
    assert junit.node_key("tests/a/test_b.py::TestC::test_d") == ("tests.a.test_b.TestC", "test_d")


def test_junit_outcomes_keep_names_and_messages():
    results = {r.key: r for r in junit.parse(JUNIT)}
    ok = results[junit.node_key("tests/capability_violations/test_kernel_rules.py::test_v1_forged_selector[empty]")]
    assert ok.outcome == "passed"
    failed = results[("tests.tasks.runtime.test_confine.TestProbe", "test_escape")]
    assert (failed.outcome, failed.message, failed.details) == ("failed", "assert 1.2 < 1.0", "elapsed too long")
    assert results[("tests.x", "test_skip")].outcome == "skipped"
    assert results[("tests.x", "test_err")].outcome == "error"
    with pytest.raises(HarnessError):
        junit.parse(b"<testsuites><testcase")


def test_junit_survives_the_serial_transfer():
    import base64
    import gzip

    blob = base64.encodebytes(gzip.compress(JUNIT)).decode()
    noisy = "\r\n".join(blob.splitlines()) + "\r\n"
    assert junit.decode_transfer(noisy) == JUNIT
    with pytest.raises(HarnessError) as err:
        junit.decode_transfer("not base64 at all!")
    assert err.value.reference == "junit-transfer-corrupt"


class _ScriptedMachine:
    """A machine that answers each command from a script: (output, status) in order."""

    def __init__(self, *answers):
        self.timeouts = Timeouts()
        self.answers = list(answers)

    def run(self, command, timeout):
        return self.answers.pop(0)


def test_a_broken_junit_transfer_still_says_how_pytest_in_the_guest_ended():
    pytest_out = "\n".join(["....F", "FAILED tests/x.py::test_y - assert 0", "1 failed, 4 passed"])
    suite = junit.GuestSuite("s", ("tests/x.py",))
    with pytest.raises(HarnessError) as err:
        suite.run(_ScriptedMachine((pytest_out, 1), ("garbage that is not base64!", 0)))
    assert err.value.reference == "junit-transfer-corrupt"
    assert "exited with status 1" in err.value.message and "1 failed, 4 passed" in err.value.context
    with pytest.raises(HarnessError) as err:
        suite.run(_ScriptedMachine((pytest_out, 2), ("", 1)))
    assert err.value.reference == "junit-missing" and "status 2" in err.value.message


def test_run_record_is_valid_json_at_every_step(tmp_path):
    from hil.qemu.record import RunRecord

    rec = RunRecord.create(tmp_path, label="t")
    assert json.loads((rec.dir / "run.json").read_text())["verdict"] == "running"
    rec.command("true", 0, 0.5)
    rec.junit("suite", JUNIT)
    rec.finish("passed", status=0)
    data = json.loads((rec.dir / "run.json").read_text())
    assert data["verdict"] == "passed" and data["commands"] == [{"command": "true", "status": 0, "seconds": 0.5}]
    assert (rec.dir / "junit" / "suite.xml").read_bytes() == JUNIT
    with pytest.raises(FileExistsError):  # never two runs in one directory
        RunRecord.create(tmp_path, label="t", now=__import__("datetime").datetime.strptime(
            data["started"], "%Y%m%dT%H%M%SZ"))


def test_relay_copies_both_ways_through_stdio():
    """QEMU's guestfwd runs `relay.py stdio HOST:PORT` with the guest connection on stdin/stdout."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo_upper():
        conn, _ = server.accept()
        with conn:
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
            conn.sendall(data.upper())

    thread = threading.Thread(target=echo_upper, daemon=True)
    thread.start()
    proc = subprocess.run([sys.executable, "-I", str(Path(relay.__file__)), "stdio", f"127.0.0.1:{port}"],
                          input=b"hello through the relay", capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"HELLO THROUGH THE RELAY"
    server.close()


def test_relay_addresses_are_checked():
    assert relay.parse_address("127.0.0.1:8443") == ("127.0.0.1", 8443)
    for bad in ("8443", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError):
            relay.parse_address(bad)


def test_the_hosts_ca_for_a_guest_serves_on_any_free_port_with_the_images_credentials(tmp_path):
    """`l4emu hil run --est-ca` and the HIL tests start the CA exactly as `l4emu boot --est-ca` does."""
    import ssl
    import urllib.request

    from hil.qemu.build import PROJECT_ROOT
    from hil.qemu.cli import host_est_ca

    with host_est_ca(None, PROJECT_ROOT / "images" / "wvds.yaml") as none:
        assert none is None  # no --est-ca: nothing started
    with host_est_ca("127.0.0.1:0", PROJECT_ROOT / "images" / "wvds.yaml", tmp_path / "ca") as server:
        assert server.port > 0 and server.options.basic_auth is not None
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.crt"))
        with urllib.request.urlopen(f"{server.url}/cacerts", context=ctx, timeout=30) as response:
            assert response.status == 200
    with pytest.raises(HarnessError) as err, \
            host_est_ca("127.0.0.1:http", PROJECT_ROOT / "images" / "wvds.yaml", tmp_path / "ca"):
        pass
    assert err.value.reference == "est-ca-failed"
