"""``make bench`` section ``hil`` (``tests/bench/run.py --only hil``): the aarch64 guest next to the host.

Measured in one run, interleaved: the guest's boot to its ready marker; ``l4emu boot
images/hello.yaml`` and ``images/wvds.yaml`` (with the development EST CA on the host) run
inside the guest and, as the baseline, on the host; the ratio guest/host. Guest times are
taken on the host around the serial-line command (what a user waits for); host times
around a subprocess ``l4emu boot`` of the same image. Needs QEMU and a built image
(``l4emu hil build``); says so and measures nothing otherwise.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _host_boot(image: str, *args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "l4emu.cli", "boot", image, *args], cwd=ROOT,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"host boot of {image} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed


def _guest_boot(machine, image: str) -> float:
    started = time.perf_counter()
    out, status = machine.run(f"l4emu boot {image}", timeout=900)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"guest boot of {image} failed ({status}):\n{out[-3000:]}")
    return elapsed


def bench_hil(args) -> list[tuple[str, str, str]]:
    from hil.qemu import bounded
    from hil.qemu.build import Image, refresh
    from hil.qemu.cli import host_est_ca, start_guest_relay
    from hil.qemu.errors import HarnessError
    from hil.qemu.machine import Machine, MachineConfig
    from hil.qemu.timeouts import Timeouts

    if shutil.which("qemu-system-aarch64") is None:
        return [("HIL guest", "not measured", "qemu-system-aarch64 missing (hil/qemu/setup.sh)")]
    try:
        Image.load()
    except HarnessError as exc:
        return [("HIL guest", "not measured", f"{exc.message} (l4emu hil build)")]
    boots, g_hello, h_hello, g_wvds, h_wvds = [], [], [], [], []
    with (tempfile.TemporaryDirectory(prefix="l4emu-bench-hil-") as tmp,
          host_est_ca("127.0.0.1:0", ROOT / "images" / "wvds.yaml") as server):
        ta = (ROOT / "var" / "est-ca" / "ca.crt").read_bytes()
        image = refresh(dest=Path(tmp), extra_files={"var/est-ca/ca.crt": ta}, log=lambda _: None)
        config = MachineConfig(timeouts=Timeouts.from_env(), est_ca=f"127.0.0.1:{server.port}", est_ca_guest_port=8443)
        for _ in range(args.hil_runs):
            with Machine(image, config) as machine:
                assert machine.boot_seconds is not None  # set once the guest is ready
                boots.append(machine.boot_seconds)
                start_guest_relay(machine, 8443)
                g_hello.append(_guest_boot(machine, "images/hello.yaml"))
                machine.run(bounded.command(batches=1), timeout=120)
                g_wvds.append(_guest_boot(machine, bounded.BOUNDED_WVDS))
            h_hello.append(_host_boot("images/hello.yaml"))
    # the host baseline needs the CA where images/wvds.yaml expects it (as `make boot` runs it)
    bounded.write(ROOT / "images" / "wvds.yaml", ROOT / bounded.BOUNDED_WVDS, 1)
    for _ in range(args.hil_runs):
        h_wvds.append(_host_boot(bounded.BOUNDED_WVDS, "--est-ca", "127.0.0.1:8443"))
    med = statistics.median
    return [
        ("HIL guest: QEMU start -> ready marker (aarch64 TCG)", f"{med(boots):.1f} s", f"{len(boots)} boot(s)"),
        ("l4emu boot images/hello.yaml in the guest", f"{med(g_hello):.1f} s",
         f"guest/host = {med(g_hello) / med(h_hello):.0f}x"),
        ("  same image on the host", f"{med(h_hello):.2f} s", ""),
        ("l4emu boot images/wvds.yaml in the guest (EST CA on the host)", f"{med(g_wvds):.1f} s",
         f"guest/host = {med(g_wvds) / med(h_wvds):.0f}x"),
        ("  same image on the host", f"{med(h_wvds):.2f} s", ""),
    ]
