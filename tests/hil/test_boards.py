"""Beyond QEMU on this laptop: a real board on a serial line (a pty pair stands in for it), exports
for labgrid and LAVA loaded by the tools' own parsers, and concurrent `hil run`s."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hil.qemu import cli, initramfs
from hil.qemu.build import PROJECT_ROOT, Image
from hil.qemu.errors import BootFailed, GuestUnresponsive, HarnessError
from hil.qemu.machine import Machine, MachineConfig
from hil.qemu.timeouts import Timeouts

FAKE_DEVICE = Path(__file__).with_name("fake_device.py")
OVERLAY_ID = "feedfacecafe0002"
RC = "poweroff() { exit 0; }\nl4emu() { echo \"client  | 5 calls answered\"; return 0; }\n"
QUICK = Timeouts(boot_s=60, command_s=60, inactivity_s=60, interrupt_s=1.5, poweroff_s=10)


class Board:
    """A 'board' behind a serial line: its firmware is a shell script on a pty; the host end is a tty path."""

    def __init__(self, tmp_path: Path, firmware: str):
        (tmp_path / "rc").write_text(RC)
        (tmp_path / "fw.sh").write_text(f"export ENV={tmp_path / 'rc'}\n{firmware}\n")
        self.proc = subprocess.Popen([sys.executable, str(FAKE_DEVICE), "pty", f". {tmp_path / 'fw.sh'}"],
                                     stdout=subprocess.PIPE, text=True)
        self.device = self.proc.stdout.readline().strip()
        assert self.device.startswith("/dev/pts/"), self.device

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def board(tmp_path):
    boards = []

    def make(firmware: str) -> Board:
        boards.append(Board(tmp_path, firmware))
        return boards[-1]

    yield make
    for b in boards:
        b.close()


BOOTING = ('sleep 0.3; echo "[    0.000000] Booting Linux on physical CPU 0x0"; '
           f'echo "{initramfs.READY} {OVERLAY_ID}"; exec /bin/sh -i')


def test_serial_board_runs_commands_with_the_same_expect_logic(board):
    b = board(BOOTING)
    machine = Machine.serial(b.device, MachineConfig(timeouts=QUICK))
    with machine:
        assert machine.overlay_id == OVERLAY_ID  # the board's image announces itself
        assert machine.run("uname -s; echo $((6*7))") == ("Linux\n42\n", 0)
        assert machine.run("false") == ("", 1)
        with pytest.raises(GuestUnresponsive):
            machine.run("cat", timeout=0.5)  # ^C over the serial line stops it
        assert machine.run("echo still here") == ("still here\n", 0)
    assert machine.transport.fd is None


def test_serial_board_checks_the_expected_image_and_boot_failures(board):
    b = board(BOOTING)
    with pytest.raises(BootFailed) as err:
        Machine.serial(b.device, MachineConfig(timeouts=QUICK), expected_overlay="0000000000000000").start()
    assert err.value.reference == "guest-overlay-mismatch"
    b = board("echo 'Kernel panic - not syncing: Attempted to kill init!'; sleep 1")
    with pytest.raises(BootFailed) as err:
        Machine.serial(b.device, MachineConfig(timeouts=QUICK)).start()
    assert err.value.reference == "guest-kernel-panic"


def test_cli_run_on_a_serial_board(board, tmp_path, capsys):
    b = board(BOOTING)
    status = cli.main(["run", "--serial", b.device, "--quiet", "--runs", str(tmp_path / "runs"), "images/hello.yaml"])
    assert status == 0, capsys.readouterr().err
    (run,) = (tmp_path / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())
    assert record["verdict"] == "passed" and record["qemu_argv"][:2] == ["serial", b.device]
    assert "5 calls answered" in (run / "transcript.log").read_text()


def test_serial_device_that_does_not_exist_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError) as err:
        Machine.serial(str(tmp_path / "ttyUSB9"), MachineConfig(timeouts=QUICK)).start()
    assert err.value.reference == "serial-open-failed"


# --------------------------------------------------------------------------- exports
def exported_image(tmp_path: Path) -> Image:
    out = tmp_path / "build"
    out.mkdir()
    for name in ("vmlinuz", "initrd.cpio", "base.cpio"):
        (out / name).write_bytes(name.encode())
    manifest = {"overlay_id": OVERLAY_ID, "kernel": {"release": "6.1.0-57-cloud-arm64"},
                "sha256": {"vmlinuz": "0123456789" * 6 + "0123", "initrd.cpio": "9" * 64}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return Image.load(out)


def test_labgrid_export_loads_in_labgrid(tmp_path):
    labgrid = pytest.importorskip("labgrid", reason="labgrid is the optional extra `hil` (bootstrap installs it)")
    image = exported_image(tmp_path)
    env_file = tmp_path / "env.yaml"
    assert cli.main(["export", "labgrid", "--out", str(image.kernel.parent), "-o", str(env_file)]) == 0
    env = labgrid.Environment(str(env_file))
    driver = env.get_target("main").get_driver("QEMUDriver", activate=False)
    argv = driver.get_qemu_base_args() if shutil.which("qemu-system-aarch64") else None
    assert (driver.machine, driver.cpu, driver.memory) == ("virt", "cortex-a72", "1024M")
    assert env.config.get_image_path("kernel") == str(image.kernel)
    if argv is not None:  # labgrid resolves the whole command line, as it would start QEMU
        joined = " ".join(argv)
        assert f"-kernel {image.kernel}" in joined and f"-initrd {image.initrd}" in joined
        assert argv[argv.index("-append") + 1] == "console=ttyAMA0 rdinit=/init quiet panic=-1"


LAVA_VALIDATE = """
import sys, yaml
from lava_common.schemas import validate
validate(yaml.safe_load(open(sys.argv[1])), strict=True)
print("valid")
"""


def lava_python() -> str:
    """The system Python with Debian's lava-common (LAVA's own job schema, voluptuous)."""
    python = "/usr/bin/python3"
    if not Path(python).exists() or subprocess.run([python, "-c", "import lava_common.schemas"],
                                                   capture_output=True).returncode != 0:
        pytest.skip("Debian's lava-common is not installed (hil/qemu/setup.sh installs it)")
    return python


def test_lava_export_validates_against_lavas_job_schema(tmp_path):
    python = lava_python()
    image = exported_image(tmp_path)
    job = tmp_path / "job.yaml"
    assert cli.main(["export", "lava", "--out", str(image.kernel.parent), "-o", str(job),
                     "--base-url", "https://lab.example/l4emu"]) == 0
    proc = subprocess.run([python, "-c", LAVA_VALIDATE, str(job)], capture_output=True, text=True)
    assert proc.stdout.strip() == "valid", proc.stderr
    doc = yaml.safe_load(job.read_text())
    images = doc["actions"][0]["deploy"]["images"]
    assert images["kernel"]["url"] == "https://lab.example/l4emu/vmlinuz"
    assert images["initrd"]["sha256sum"] == "9" * 64 and isinstance(images["kernel"]["sha256sum"], str)
    assert doc["actions"][1]["boot"]["prompts"] == [f"{initramfs.READY} {OVERLAY_ID}"]
    # and LAVA's schema does reject a broken job: the validator is not a rubber stamp
    doc["actions"][2]["test"]["interactive"][0]["name"] = "has a space"
    job.write_text(yaml.safe_dump(doc))
    assert subprocess.run([python, "-c", LAVA_VALIDATE, str(job)], capture_output=True).returncode != 0


# ----------------------------------------------------------------------- concurrency
SENTINEL_ID = ("import sys; d = open(sys.argv[1], 'rb').read(); i = d.rindex(b'etc/hil/overlay\\\\0'); "
               "print(d[i:].split(b'\\\\n')[0][-16:].decode())")


def test_concurrent_runs_each_get_their_own_overlay_and_initrd(tmp_path):
    """Two `l4emu hil run`s at once (refresh included) against a fake QEMU: both work, nothing shared is written."""
    out = tmp_path / "build"
    out.mkdir()
    for name in ("vmlinuz", "initrd.cpio", "base.cpio"):
        (out / name).write_bytes(b"")
    (out / "manifest.json").write_text(json.dumps({"overlay_id": "x", "source_date_epoch": 0}))
    (tmp_path / "rc").write_text(RC)
    # the fake QEMU announces the overlay id it finds in the initrd it was given, as the real /init does
    (tmp_path / "body.sh").write_text(
        f"export ENV={tmp_path / 'rc'}\n"
        f"echo \"{initramfs.READY} $({sys.executable} -c \"{SENTINEL_ID}\" \"$INITRD\")\"\nexec /bin/sh -i\n")
    qemu = tmp_path / "fake-qemu"
    qemu.write_text(f"#!/bin/sh\nwhile [ \"$1\" != -initrd ]; do shift; done; export INITRD=\"$2\"\n"
                    f"exec {sys.executable} {FAKE_DEVICE} qemu '. {tmp_path / 'body.sh'}' "
                    "-chardev \"$(cat /proc/$$/cmdline | tr '\\0' '\\n' | grep '^socket,id=console')\"\n")
    qemu.chmod(0o755)
    argv = [sys.executable, "-m", "hil.qemu.cli", "run", "--qemu", str(qemu), "--quiet", "--out", str(out),
            "--runs", str(tmp_path / "runs"), "images/hello.yaml"]
    env = dict(os.environ, L4EMU_HIL_TIMEOUT_MULTIPLIER="1")
    procs = [subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    records = [json.loads((d / "run.json").read_text()) for d in sorted((tmp_path / "runs").iterdir())]
    assert len(records) == 2 and {r["verdict"] for r in records} == {"passed"}
    assert records[0]["initrd"]["path"] != records[1]["initrd"]["path"]
    assert not list((out / "runs-tmp").iterdir())  # each run removed its own initrd
