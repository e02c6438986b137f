"""Integration tests in a real aarch64 guest (``pytest -m hil``, ``make hil``).

One guest serves the module (``GuestPool``); a test whose command times out leaves it dirty
and the next test gets a freshly booted one. Every run writes ``hil/runs/<timestamp>-<pid>-pytest/``:
the transcript of every guest, QEMU's command line and stderr, the in-guest JUnit XML and
``run.json``.

The project's confinement and attack suites run *inside* the guest with ``--junitxml``, and
each of their tests is one test here, named by its guest node id
(``test_in_guest[tests/capability_violations/...::test_v1_forged_selector[empty]]``): a failure
in the guest reads like a failure on the host, with the guest's message.

Every timeout comes from one ``Timeouts`` model and scales with ``L4EMU_HIL_TIMEOUT_MULTIPLIER``:
the pytest-timeout of each test here covers the boot plus the in-guest budget, and pytest in the
guest gets ``--timeout`` from the same budget, so the innermost layer fires first.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hil.qemu import cli
from hil.qemu.build import PROJECT_ROOT, Image
from hil.qemu.errors import BootFailed, GuestUnresponsive, HarnessError
from hil.qemu.junit import GuestSuite, node_key
from hil.qemu.machine import Machine, MachineConfig
from hil.qemu.timeouts import Timeouts

TIMEOUTS = Timeouts.from_env()
SUITES = {
    "confine": GuestSuite("confine", ("tests/tasks/runtime/test_confine.py",), budget_s=1200),
    "violations": GuestSuite("violations", ("tests/capability_violations",), budget_s=2400),
}
BOOT_BUDGET_S = 420  # an l4emu boot in the guest: ~30 s idle, minutes on a loaded 2-core host


def hil_selected(config) -> bool:
    return bool(re.search(r"(?<!not )\bhil\b", config.getoption("markexpr") or ""))


def collect_on_host(args: tuple[str, ...]) -> list[str]:
    from hil.qemu.junit import collect

    return collect(args, PROJECT_ROOT)


def pytest_generate_tests(metafunc):
    if "guest_case" not in metafunc.fixturenames:
        return
    if not hil_selected(metafunc.config):
        metafunc.parametrize("guest_case", [pytest.param(None, id="not-selected")])
        return
    params = []
    for suite in SUITES.values():
        limit = pytest.mark.timeout(TIMEOUTS.host_test_timeout(suite.budget_s, boots=1))
        params += [pytest.param((suite.name, nodeid), id=nodeid, marks=limit)
                   for nodeid in collect_on_host(suite.args)]
    metafunc.parametrize("guest_case", params)


@pytest.fixture(scope="module")
def record(request):
    if not hil_selected(request.config):
        pytest.skip("HIL tests boot QEMU; select them with `pytest -m hil` (make hil)")
    from hil.qemu.record import RunRecord

    rec = RunRecord.create(label="pytest")
    print(f"\nhil: run record in {rec.dir}")
    yield rec
    failed = request.session.testsfailed
    rec.finish("passed" if failed == 0 else "failed", host_tests_failed=failed)


@pytest.fixture(scope="module")
def image(record, tmp_path_factory):
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 is not installed (hil/qemu/setup.sh)")
    try:
        Image.load()
    except HarnessError as exc:
        pytest.skip(f"no HIL image: {exc.message} (l4emu hil build)")
    from hil.qemu.build import DEFAULT_OUT, refresh
    from hil.qemu.machine import qemu_argv

    built = refresh(dest=tmp_path_factory.mktemp("hil-image"), log=lambda _: None)
    config = MachineConfig(timeouts=TIMEOUTS)
    record.machine(qemu=config.qemu, argv=qemu_argv(built.kernel, built.initrd, config, Path("<console socket>")),
                   kernel=built.kernel, initrd=built.initrd, manifest=built.manifest,
                   multiplier=TIMEOUTS.multiplier, person_argv=qemu_argv(built.kernel, built.initrd, config),
                   base=DEFAULT_OUT / "base.cpio")
    return built


@pytest.fixture(scope="module")
def pool(image, record):
    from hil.qemu.pool import GuestPool

    config = MachineConfig(timeouts=TIMEOUTS)
    with GuestPool(image, config, log_path=record.transcript, stderr_path=record.qemu_stderr) as p:
        yield p
        record.data.update(boots=p.boots, boot_s=[round(s, 2) for s in p.boot_seconds])


@pytest.fixture
def guest(pool):
    return pool.get()


def boot_in_guest(guest: Machine, record, image: str, *args: str, budget: float = BOOT_BUDGET_S) -> tuple[str, int]:
    import time

    command = cli.boot_command(image, ["--timeout", str(round(TIMEOUTS.scaled(budget - 30))), *args])
    started = time.monotonic()
    status = None
    try:
        out, status = guest.run(command, timeout=budget)
        return out, status
    finally:
        record.command(command, status, time.monotonic() - started)


ONE_BOOT = pytest.mark.timeout(TIMEOUTS.host_test_timeout(BOOT_BUDGET_S, boots=1))


@pytest.mark.hil
@pytest.mark.timeout(TIMEOUTS.host_test_timeout(60, boots=1))
def test_guest_is_aarch64_with_the_locked_wheels(guest):
    from hil.qemu import lock

    out, status = guest.run("uname -m; uname -r; python3 -c 'import cryptography, yaml, pyseccomp; "
                            "print(cryptography.__version__)'", timeout=120)
    assert status == 0, out
    pinned = lock.load()
    crypto = next(w for w in pinned.wheels if w.name == "cryptography")
    assert out.split() == ["aarch64", pinned.kernel.release, crypto.version]


@pytest.mark.hil
@ONE_BOOT
def test_hello_boots_confined_in_the_guest(guest, record):
    out, status = boot_in_guest(guest, record, "images/hello.yaml")
    assert status == 0, out
    assert "client  | 5 calls answered" in out
    assert "client  | server answered through shared memory: HELLO THROUGH SHARED MEMORY" in out
    enforced = re.search(r"confinement: enforced ([a-z_, ]+)", out)
    assert enforced, out
    steps = re.findall(r"[a-z_]+", enforced.group(1))
    for step in ("network", "mount_ns", "filesystem", "proc", "credentials", "no_new_privs", "seccomp"):
        assert step in steps, step


@pytest.mark.hil
@ONE_BOOT
def test_wvds_crypto_runs_in_the_guest(guest, record):
    out, status = boot_in_guest(guest, record, "hil/qemu/images/wvds-crypto.yaml")
    assert status == 0, out
    for line in ("gateway | AES-256-GCM: key", "chunked AES-256-GCM: 200 KiB in 4 chunks, round trip ok",
                 "ML-DSA-65: 3309-byte signature verified", "ML-KEM-768: encapsulated and decapsulated, shared "
                 "secrets match", "gateway | gateway done", "0 denied operation(s)"):
        assert line in out, line


@pytest.mark.hil
@pytest.mark.timeout(TIMEOUTS.host_test_timeout(BOOT_BUDGET_S, 180, boots=1))
def test_full_wvds_enrolls_against_the_ca_on_the_host(image, record):
    """The guest's only network path: a restricted user-mode NIC forwarding one port to the host's CA."""
    from hil.qemu.build import refresh
    from hil.qemu.cli import host_est_ca, start_guest_relay

    # any free host port; the guest's tasks still use 8443
    with host_est_ca("127.0.0.1:0", PROJECT_ROOT / "images" / "wvds.yaml") as server:
        ta = (PROJECT_ROOT / "var" / "est-ca" / "ca.crt").read_bytes()
        with_ta = refresh(dest=Path(record.dir) / "wvds-image", extra_files={"var/est-ca/ca.crt": ta},
                          log=lambda _: None)
        config = MachineConfig(timeouts=TIMEOUTS, est_ca=f"127.0.0.1:{server.port}", est_ca_guest_port=8443)
        try:
            with Machine(with_ta, config, log_path=record.transcript, stderr_path=record.qemu_stderr) as guest:
                start_guest_relay(guest, 8443)
                # nothing else is reachable: not the host (QEMU's gateway), not the outside
                probe, _ = guest.run("for a in '10.0.2.2 22' '10.0.2.100 9' '1.1.1.1 443'; do "
                                     "nc -w 3 $a </dev/null >/dev/null 2>&1 && echo open $a || echo closed $a; done",
                                     timeout=120)
                from hil.qemu import bounded  # wvds seals batches until Ctrl-C: this copy stops after one

                _, made = guest.run(bounded.command(batches=1), timeout=120)
                assert made == 0
                out, status = boot_in_guest(guest, record, bounded.BOUNDED_WVDS)
        finally:
            shutil.rmtree(Path(record.dir) / "wvds-image", ignore_errors=True)
        assert status == 0, out
        assert "est     | enrolled: serial=" in out
        assert "gateway | device certificate: subject CN=gateway-0001,O=WvdS OEM" in out
        assert "development EST CA at" not in out  # no CA inside the guest
        assert "open" not in probe, probe
        assert any(r.path.endswith("/simpleenroll") and r.status == 200 for r in server.records), \
            [r.line() for r in server.records]  # the host's CA issued the device certificate


@pytest.mark.hil
@pytest.mark.timeout(TIMEOUTS.host_test_timeout(120, boots=1))
def test_guest_reports_failure_statuses(guest):
    _, status = guest.run("l4emu boot images/does-not-exist.yaml", timeout=120)
    assert status == 2  # invalid image: nothing started, the status crosses the serial line


@pytest.mark.hil
def test_in_guest(guest_case, pool, record):
    """One host outcome per test of the project's confinement and attack suites run in the guest."""
    suite_name, nodeid = guest_case
    results = _suite_results(pool, record, suite_name)
    result = results.get(node_key(nodeid))
    if result is None:
        pytest.fail(f"{nodeid} was collected on the host but did not run in the guest "
                    f"(guest pytest status {results.status})", pytrace=False)
    if result.outcome == "skipped":
        pytest.skip(f"skipped in the guest: {result.message}")
    if result.outcome != "passed":
        pytest.fail(f"{result.outcome} in the guest ({result.seconds:.1f} s): {result.message}\n{result.details}",
                    pytrace=False)


class _Results(dict):
    status: int


_SUITE_CACHE: dict[str, _Results] = {}


def _suite_results(pool, record, name: str) -> _Results:
    import time

    if name not in _SUITE_CACHE:
        suite = SUITES[name]
        guest = pool.get()
        started = time.monotonic()
        status = None
        try:
            status, _out, cases = suite.run(guest, record)
        finally:
            record.command(suite.command(TIMEOUTS.guest_pytest_timeout(suite.budget_s),
                                         TIMEOUTS.guest_test_multiplier()), status,
                           time.monotonic() - started)
        results = _Results({c.key: c for c in cases})
        results.status = status
        _SUITE_CACHE[name] = results
    return _SUITE_CACHE[name]


@pytest.mark.hil
@pytest.mark.timeout(TIMEOUTS.host_test_timeout(30, 60, boots=2))
def test_a_command_that_times_out_gets_the_next_test_a_fresh_guest(pool):
    guest = pool.get()
    boots = pool.boots
    with pytest.raises(GuestUnresponsive) as err:
        guest.run("sleep 100000", timeout=5)
    assert err.value.reference in ("guest-command-timeout", "guest-console-silent")
    assert not guest.clean
    fresh = pool.get()
    assert fresh is not guest and pool.boots == boots + 1
    assert fresh.run("ps | grep '[s]leep 100000' || echo none", timeout=60) == ("none\n", 0)


@pytest.mark.hil
@pytest.mark.timeout(TIMEOUTS.host_test_timeout(BOOT_BUDGET_S, boots=2))
def test_two_hil_runs_at_once_both_work(record):
    """Each run builds its own overlay and initrd: nothing shared is written, nothing collides."""
    env = dict(os.environ, L4EMU_HIL_TIMEOUT_MULTIPLIER=str(TIMEOUTS.multiplier))
    runs = Path(record.dir) / "concurrent"
    argv = [sys.executable, "-m", "hil.qemu.cli", "run", "--quiet", "--runs", str(runs), "--timeout",
            str(BOOT_BUDGET_S), "images/hello.yaml"]
    procs = [subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    records = [json.loads((d / "run.json").read_text()) for d in sorted(runs.iterdir())]
    assert [r["verdict"] for r in records] == ["passed", "passed"]
    assert records[0]["initrd"]["path"] != records[1]["initrd"]["path"]


@pytest.mark.hil
@pytest.mark.timeout(TIMEOUTS.host_test_timeout(60, boots=1))
def test_a_real_guest_that_cannot_start_init_is_a_boot_failure(image):
    """The same kernel, but rdinit names nothing: the kernel panics and QEMU exits (panic=-1, -no-reboot)."""
    config = MachineConfig(cmdline=("console=ttyAMA0", "rdinit=/nonexistent", "quiet", "panic=-1"),
                           timeouts=TIMEOUTS)
    with pytest.raises(BootFailed) as err:
        Machine(image, config).start()
    assert err.value.reference == "guest-kernel-panic"
    assert err.value.context


@pytest.mark.hil
@pytest.mark.timeout(TIMEOUTS.scaled(900))
def test_two_builds_from_the_lock_give_identical_archives(image, tmp_path):
    """Reproducible: the same lock and checkout, built twice from scratch (downloads shared), same sha256."""
    from hil.qemu.build import DEFAULT_OUT, build

    hashes = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        (out / "cache").symlink_to(DEFAULT_OUT / "cache")  # the verified downloads; every file is re-hashed
        built = build(out, log=lambda _: None)
        hashes.append({k: built.manifest["sha256"][k] for k in ("vmlinuz", "base.cpio", "overlay.cpio",
                                                                 "initrd.cpio")})
        shutil.rmtree(out / "base-root", ignore_errors=True)
    assert hashes[0] == hashes[1]
    # and the base the other tests booted is that same archive (the overlay differs with every edit)
    assert hashes[0]["base.cpio"] == image.manifest["sha256"]["base.cpio"]
