"""The HIL smoke that CI runs through `make test`: one aarch64 guest, hello, a handful of attacks.

`make test` builds the guest from the lock (`l4emu hil build`) and runs pytest with
``L4EMU_HIL_SMOKE=1``; then these tests boot QEMU once and must pass (a missing QEMU or image
is a failure, with the command that fixes it). Without the variable (a developer's plain
``pytest``) they skip, saying how to run them.

Bounded: the guest session has a hard cap of ``SMOKE_CAP_S`` (x ``L4EMU_HIL_TIMEOUT_MULTIPLIER``)
from QEMU's start to its end, every wait inside it (boot, hello, the in-guest pytest and its
per-test ``--timeout``) is cut to what is left of it, and pytest-timeout on the host allows the
same cap plus a margin, so the whole smoke cannot take longer than about 4 minutes at
multiplier 1. The violation cases are selected with ``-k`` and reported one host test each,
under their guest names.
"""
from __future__ import annotations

import os
import shutil
import time

import pytest

from hil.qemu.junit import GuestSuite, node_key
from hil.qemu.timeouts import Timeouts

ENABLED = os.environ.get("L4EMU_HIL_SMOKE", "") not in ("", "0")
SMOKE_CAP_S = 200.0  # QEMU start to exit; the host-side limit adds HOST_MARGIN_S for refresh and poweroff
HOST_MARGIN_S = 40.0
TIMEOUTS = Timeouts.from_env(boot_s=120, command_s=150, inactivity_s=120, interrupt_s=10, poweroff_s=15,
                             session_s=SMOKE_CAP_S)
CASES = GuestSuite("smoke-violations", (
    "tests/capability_violations/test_kernel_rules.py",
    "-k", "forged_selector or map_copies_grant_moves or use_after_recursive_revoke or label_comes_from_the_kernel",
), budget_s=150)
CAP = pytest.mark.timeout(TIMEOUTS.scaled(SMOKE_CAP_S + HOST_MARGIN_S))

pytestmark = pytest.mark.skipif(not ENABLED, reason="the HIL smoke runs in `make test` (L4EMU_HIL_SMOKE=1); "
                                                    "`make hil` runs the whole HIL suite")


def _case_ids() -> list:
    if not ENABLED:
        return [pytest.param(None, id="not-enabled")]
    from hil.qemu.build import PROJECT_ROOT
    from hil.qemu.junit import collect

    return [pytest.param(nodeid, id=nodeid) for nodeid in collect(CASES.args, PROJECT_ROOT)]


class _Smoke:
    def __init__(self):
        self.machine = None
        self.started = None
        self.results = None
        self.hello = None
        self.dest = None


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from hil.qemu.build import Image, refresh
    from hil.qemu.errors import HarnessError
    from hil.qemu.machine import Machine, MachineConfig
    from hil.qemu.record import RunRecord

    if shutil.which("qemu-system-aarch64") is None:
        pytest.fail("qemu-system-aarch64 is missing: `make test` installs it (bootstrap.sh runs hil/qemu/setup.sh "
                    "as root)", pytrace=False)
    try:
        Image.load()
    except HarnessError as exc:
        pytest.fail(f"{exc.message}: `make test` builds it with `l4emu hil build`", pytrace=False)
    record = RunRecord.create(label="smoke")
    state = _Smoke()
    image = refresh(dest=tmp_path_factory.mktemp("smoke-image"), log=lambda _: None)
    machine = Machine(image, MachineConfig(timeouts=TIMEOUTS), log_path=record.transcript,
                      stderr_path=record.qemu_stderr)
    from hil.qemu.build import DEFAULT_OUT
    from hil.qemu.machine import qemu_argv

    record.machine(qemu="qemu-system-aarch64", argv=machine.argv, kernel=image.kernel, initrd=image.initrd,
                   manifest=image.manifest, multiplier=TIMEOUTS.multiplier,
                   person_argv=qemu_argv(image.kernel, image.initrd, machine.config), base=DEFAULT_OUT / "base.cpio")
    state.started = time.monotonic()
    try:
        machine.start()
        record.data["boot_s"] = round(machine.boot_seconds, 2)
        state.machine = machine
        state.record = record
        yield state
    finally:
        machine.stop()
        record.finish("done", smoke_s=round(time.monotonic() - state.started, 2), cap_s=TIMEOUTS.session)
        print(f"\nhil smoke: {time.monotonic() - state.started:.1f} s in QEMU (cap {TIMEOUTS.session:.0f} s); "
              f"record {record.dir}")


@CAP
def test_smoke_hello_in_the_guest(smoke):
    started = time.monotonic()
    out, status = smoke.machine.run("l4emu boot images/hello.yaml", timeout=TIMEOUTS.command_s)
    smoke.record.command("l4emu boot images/hello.yaml", status, time.monotonic() - started)
    assert status == 0, out
    assert "client  | 5 calls answered" in out
    assert "confinement: enforced" in out and "seccomp" in out


@pytest.fixture(scope="module")
def violation_results(smoke):
    started = time.monotonic()
    status, out, cases = CASES.run(smoke.machine, smoke.record)
    smoke.record.command(" ".join(CASES.args), status, time.monotonic() - started)
    return status, out, {c.key: c for c in cases}


@CAP
@pytest.mark.parametrize("nodeid", _case_ids())
def test_smoke_violation_in_the_guest(violation_results, nodeid):
    status, out, results = violation_results
    result = results.get(node_key(nodeid))
    if result is None:
        pytest.fail(f"{nodeid} did not run in the guest (guest pytest status {status}):\n{out[-2000:]}",
                    pytrace=False)
    if result.outcome != "passed":
        pytest.fail(f"{result.outcome} in the guest: {result.message}\n{result.details}", pytrace=False)
