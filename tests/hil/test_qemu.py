"""hil/qemu: the aarch64 guest image, the QEMU console driver and ``l4emu hil``.

Two kinds of tests live here:

- Unit tests (not marked): the pure parts (QEMU argv, console framing and parsing, the
  readelf closure check, the cpio writer, apt/marker parsing, errors) and ``Machine``
  driven against a *fake QEMU*: a shell script that prints the guest's markers and then
  is a shell. They run in the default suite and take well under 2 s together.
- Integration tests (``@pytest.mark.hil``): a real qemu-system-aarch64 guest booted once
  for the module. They run only when selected (``pytest -m hil``, ``make hil``) and skip,
  saying why, when QEMU is missing or the image is not built (``l4emu hil build``).
"""
from __future__ import annotations

import io
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from hil.qemu import cli, fetch, initramfs
from hil.qemu.build import PROJECT_ROOT, Image
from hil.qemu.errors import BootFailed, GuestUnresponsive, HarnessError, HilError
from hil.qemu.machine import Machine, MachineConfig, command_line, command_output, normalise, qemu_argv, tail
from hil.qemu.timeouts import Timeouts

OVERLAY_ID = "feedfacecafe0001"


# ----------------------------------------------------------------------- QEMU argv
def test_qemu_argv_is_the_recommended_machine_as_a_list():
    argv = qemu_argv(Path("/img/vmlinuz"), Path("/img/initrd.cpio"), console_socket=Path("/t/console.sock"))
    assert argv[0] == "qemu-system-aarch64"
    joined = " ".join(argv)
    for flags in ("-M virt", "-cpu cortex-a72", "-smp 1", "-m 1024", "-nic none", "-no-reboot",
                  "-monitor none", "-chardev socket,id=console,path=/t/console.sock", "-serial chardev:console",
                  "-kernel /img/vmlinuz", "-initrd /img/initrd.cpio"):
        assert flags in joined, flags
    assert argv[argv.index("-append") + 1] == "console=ttyAMA0 rdinit=/init quiet panic=-1"
    # for a person: the serial port on the terminal
    assert "stdio,id=console,signal=off" in qemu_argv(Path("k"), Path("i"))


def test_qemu_argv_with_the_host_ca_has_one_restricted_forward():
    from hil.qemu.machine import network_args

    argv = qemu_argv(Path("k"), Path("i"), MachineConfig(est_ca="127.0.0.1:8443"))
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev.startswith("user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:8443-cmd:")
    assert netdev.endswith("relay.py stdio 127.0.0.1:8443") and "hostfwd" not in netdev
    assert argv[argv.index("-device") + 1] == "virtio-net-device,netdev=net0"
    assert "-nic" not in argv
    assert argv[argv.index("-append") + 1].endswith(" l4emu_est_ca_port=8443")
    assert network_args(None) == ["-nic", "none"]


def test_qemu_argv_refuses_too_little_memory_and_plain_max():
    with pytest.raises(HarnessError) as small:
        qemu_argv(Path("k"), Path("i"), MachineConfig(memory_mib=256))
    assert small.value.reference == "machine-memory-too-small"
    with pytest.raises(HarnessError) as cpu:
        qemu_argv(Path("k"), Path("i"), MachineConfig(cpu="max"))
    assert cpu.value.reference == "machine-cpu-max"
    assert "-cpu max,pauth-impdef=on" in " ".join(qemu_argv(Path("k"), Path("i"),
                                                            MachineConfig(cpu="max,pauth-impdef=on")))


# ------------------------------------------------------------- console framing/parsing
def test_command_line_cannot_match_its_own_markers():
    line = command_line("echo hi", 7)
    assert "BEGIN-7" not in line and "END-7" not in line  # an echoed command never looks like output
    assert "\n" not in line


def test_command_output_is_exact_with_pty_line_ends():
    before = "junk\r\nBEGIN-3\r\r\nline 1\r\nline 2\r\n\r\n"
    assert command_output(before, 3) == "line 1\nline 2\n"
    assert command_output("BEGIN-4\r\n\r\n", 4) == ""
    assert command_output("BEGIN-5\r\nno newline\r\n", 5) == "no newline"


def test_command_output_without_begin_marker_is_a_typed_error():
    with pytest.raises(HarnessError) as err:
        command_output("BEGIN-1\r\nold\r\n", 2)
    assert err.value.reference == "console-frame-lost"


def test_normalise_and_tail_strip_terminal_noise():
    assert normalise("a\r\r\nb\x1b[6n\x1b[1;32mc\x1b[0m\r\n") == "a\nbc\n"
    assert tail("\r\n".join(f"l{i}" for i in range(40)) + "\r\n\r\n", 3) == ["l37", "l38", "l39"]


# ---------------------------------------------------------------- ELF closure check
READELF_MANY = textwrap.dedent("""
    File: /r/usr/bin/python3.11

    Dynamic section at offset 0x1 contains 3 entries:
      Tag        Type                         Name/Value
     0x0000000000000001 (NEEDED)             Shared library: [libm.so.6]
     0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]

    File: /r/site/_rust.abi3.so

    Dynamic section at offset 0x2 contains 4 entries:
     0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]
     0x000000000000001d (RUNPATH)            Library runpath: [$ORIGIN/../lib.libs:/opt/x]

    File: /r/bin/busybox

    There is no dynamic section in this file.
""")


def test_parse_readelf_dynamic_many_files():
    info = initramfs.parse_readelf_dynamic(READELF_MANY)
    assert info["/r/usr/bin/python3.11"].needed == ["libm.so.6", "libc.so.6"]
    assert info["/r/site/_rust.abi3.so"].runpath == ["$ORIGIN/../lib.libs", "/opt/x"]
    assert info["/r/bin/busybox"].needed == []


def test_parse_readelf_dynamic_single_file_has_no_file_header():
    text = " 0x0000000000000001 (NEEDED)             Shared library: [libseccomp.so.2]\n"
    assert initramfs.parse_readelf_dynamic(text, single="/x.so")["/x.so"].needed == ["libseccomp.so.2"]


def test_missing_libraries_follows_runpath_origin_and_default_dirs():
    present = {"/usr/lib/aarch64-linux-gnu/libc.so.6", "/site/lib.libs/libffi.so.8"}
    elves = {
        "/usr/bin/python3": initramfs.DynamicInfo(needed=["libc.so.6"]),
        "/site/pkg/_ext.so": initramfs.DynamicInfo(needed=["libffi.so.8", "libgcc_s.so.1"],
                                                   runpath=["$ORIGIN/../lib.libs"]),
    }
    assert initramfs.missing_libraries(elves, present.__contains__) == [("/site/pkg/_ext.so", "libgcc_s.so.1")]


def test_guest_exists_resolves_symlinks_inside_the_root(tmp_path):
    (tmp_path / "lib/aarch64-linux-gnu").mkdir(parents=True)
    (tmp_path / "lib/aarch64-linux-gnu/libc.so.6").write_bytes(b"")
    (tmp_path / "lib/ld.so").symlink_to("/lib/aarch64-linux-gnu/libc.so.6")  # absolute: the guest's /
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr/lib").symlink_to("../lib")
    exists = initramfs.guest_exists(tmp_path)
    assert exists("/lib/ld.so") and exists("/usr/lib/aarch64-linux-gnu/libc.so.6")
    assert not exists("/lib/aarch64-linux-gnu/libgcc_s.so.1")


# ----------------------------------------------------------------------- cpio writer
def read_newc(data: bytes) -> list[tuple[str, int, tuple[int, int], bytes]]:
    """A minimal newc reader, independent of the writer: (name, mode, rdev, data) per entry."""
    entries: list[tuple[str, int, tuple[int, int], bytes]] = []
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701" and pos % 4 == 0
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            assert len(data) % 512 == 0
            return entries
        entries.append((name, mode, rdev, body))


def test_cpio_writer_round_trip(tmp_path):
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/tool").write_bytes(b"#!/bin/sh\n")
    (tmp_path / "usr/bin/tool").chmod(0o755)
    (tmp_path / "usr/bin/link").symlink_to("tool")
    out = io.BytesIO()
    writer = initramfs.CpioWriter(out)
    writer.add_chardev("dev/console", 5, 1)
    assert writer.add_tree(tmp_path) == 4
    writer.add_bytes("etc/hil/overlay", b"id\n")
    writer.finish()
    entries = {name: (mode, rdev, body) for name, mode, rdev, body in read_newc(out.getvalue())}
    assert list(entries) == ["dev/console", "usr", "usr/bin", "usr/bin/link", "usr/bin/tool", "etc/hil/overlay"]
    assert stat.S_ISCHR(entries["dev/console"][0]) and entries["dev/console"][1] == (5, 1)
    assert stat.S_ISDIR(entries["usr/bin"][0])
    assert stat.S_ISLNK(entries["usr/bin/link"][0]) and entries["usr/bin/link"][2] == b"tool"
    assert entries["usr/bin/tool"][0] == stat.S_IFREG | 0o755 and entries["usr/bin/tool"][2] == b"#!/bin/sh\n"
    assert entries["etc/hil/overlay"][2] == b"id\n"


def test_init_script_is_valid_sh_and_checks_the_sentinel():
    assert initramfs.INIT_SCRIPT.startswith("#!/bin/busybox sh\n")
    assert f"[ ! -s /{initramfs.SENTINEL} ]" in initramfs.INIT_SCRIPT
    assert "exec setsid cttyhack sh" in initramfs.INIT_SCRIPT
    check = subprocess.run(["sh", "-n"], input=initramfs.INIT_SCRIPT, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr


# ---------------------------------------------------------------- apt, requirements
def test_apt_stanzas_and_download_names():
    text = ("Package: busybox-static\nArchitecture: arm64\nVersion: 1:1.35.0-4+deb12u1+b1\n\n"
            "Package: media-types\nArchitecture: all\nVersion: 10.0.0\nDepends: x\n")
    stanzas = fetch.parse_stanzas(text)
    assert fetch.deb_filename(stanzas["busybox-static:arm64"]) == "busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb"
    assert fetch.deb_filename(stanzas["media-types:all"]) == "media-types_10.0.0_all.deb"


@pytest.mark.parametrize("marker, applies", [
    ("extra == 'ssh'", False),
    ("platform_python_implementation != 'PyPy'", True),
    ("python_full_version < '3.11'", False),
    ('python_version >= "3.8"', True),
    ("python_version < '3.10' or platform_machine == 'aarch64'", True),
    ("sys_platform == 'win32' and python_version >= '3.8'", False),
    ("some_future_var ~= 'x'", True),  # unreadable: ship rather than drop
    ("(sys_platform == 'win32' and extra == 'zoneinfo') or (sys_platform == 'emscripten')", False),  # hypothesis
])
def test_marker_applies_to_the_guest(marker, applies):
    assert fetch.marker_applies(marker) is applies


def test_every_runtime_dependency_is_shipped():
    from hil.qemu.build import BINARY_DISTS, PURE_DISTS

    dists = ("l4emu", *PURE_DISTS, *BINARY_DISTS)
    assert fetch.unshipped_requirements(dists, (*PURE_DISTS, *BINARY_DISTS)) == []
    assert "l4emu needs cryptography" in fetch.unshipped_requirements(["l4emu"], ["pyyaml"])


def test_crypto_only_image_is_wvds_minus_est():
    """hil/qemu/images/wvds-crypto.yaml keeps the crypto service and the gateway's crypto side exactly as in wvds."""
    import yaml

    from kernel_model.host.images import load_image

    load_image(PROJECT_ROOT / "hil/qemu/images/wvds-crypto.yaml")  # valid, modules found
    full = yaml.safe_load((PROJECT_ROOT / "images/wvds.yaml").read_text())
    crypto = yaml.safe_load((PROJECT_ROOT / "hil/qemu/images/wvds-crypto.yaml").read_text())
    assert crypto["tasks"]["crypto"] == full["tasks"]["crypto"]
    assert set(crypto["tasks"]) == {"crypto", "gateway"}
    gateway, full_gateway = crypto["tasks"]["gateway"], full["tasks"]["gateway"]
    assert gateway["caps"].items() <= full_gateway["caps"].items()
    assert gateway["config"]["crypto"] == full_gateway["config"]["crypto"] and "est" not in gateway["config"]
    assert crypto["objects"].items() <= full["objects"].items()


# -------------------------------------------------------------------------- errors
def test_errors_are_typed_with_distinct_exit_codes_and_render_context():
    assert {BootFailed.exit_code, HarnessError.exit_code, GuestUnresponsive.exit_code} == {3, 4, 5}
    err = BootFailed("qemu-boot-timeout", "no marker", context=["a", "b"], hint="wait longer")
    assert err.render() == ("error: no marker [qemu-boot-timeout]\n  [2 lines of output]\n  a\n  b\n"
                            "  [end of output]\nhint: wait longer")
    with pytest.raises(ValueError):
        HilError("Not Kebab", "x")


# ------------------------------------------------------ Machine against a fake QEMU
FAKE_DEVICE = Path(__file__).with_name("fake_device.py")
GUEST_RC = "poweroff() { exit 0; }\nl4emu() { echo \"client  | 5 calls answered\"; return 1; }\n"


def fake_qemu(tmp_path: Path, body: str, before: str = "") -> str:
    """A stand-in for qemu-system-aarch64: ``before`` runs first (its stderr is QEMU's), then it
    connects to the console socket named in its argv and runs ``body`` on a pty behind it."""
    import sys

    (tmp_path / "guest-rc").write_text(GUEST_RC)
    (tmp_path / "body.sh").write_text(f"export ENV={tmp_path / 'guest-rc'}\n{body}\n")
    script = tmp_path / "fake-qemu"
    script.write_text(f"#!/bin/sh\n{before}\n"
                      f"exec {sys.executable} {FAKE_DEVICE} qemu '. {tmp_path / 'body.sh'}' \"$@\"\n")
    script.chmod(0o755)
    return str(script)


def fake_image(tmp_path: Path) -> Image:
    return Image(tmp_path / "vmlinuz", tmp_path / "initrd.cpio", OVERLAY_ID, {})


def quick(multiplier: float) -> Timeouts:
    return Timeouts(boot_s=60, command_s=60, inactivity_s=60, interrupt_s=1.5, poweroff_s=10, multiplier=multiplier)


READY_SHELL = f'echo "{initramfs.READY} {OVERLAY_ID}"\nexec /bin/sh -i'


def test_machine_runs_commands_and_returns_output_and_status(tmp_path):
    config = MachineConfig(qemu=fake_qemu(tmp_path, READY_SHELL), timeouts=quick(1))
    log = tmp_path / "console.log"
    machine = Machine(fake_image(tmp_path), config, log_path=log, stderr_path=tmp_path / "qemu-stderr.log")
    with machine:
        assert machine.run("echo hello; echo world") == ("hello\nworld\n", 0)
        assert machine.run("printf 'no newline'") == ("no newline", 0)
        assert machine.run("f() { return 3; }; f") == ("", 3)
        assert machine.run("printf '\\003\\001x'") == ("\x03\x01x", 0)  # any byte crosses the socket console
        assert machine.clean
    machine.stop()  # safe twice
    with pytest.raises(HarnessError) as err:
        machine.run("true")
    assert err.value.reference == "machine-not-started"
    assert "BEGIN-2" in log.read_text()
    assert machine.transport.proc is None  # QEMU is gone


def test_machine_interrupts_a_hung_command_and_is_no_longer_clean(tmp_path):
    # only the command's own budget is short; the ^C recovery may take long on a loaded machine
    timeouts = Timeouts(boot_s=60, command_s=60, inactivity_s=60, interrupt_s=6, poweroff_s=10)
    config = MachineConfig(qemu=fake_qemu(tmp_path, READY_SHELL), timeouts=timeouts)
    with Machine(fake_image(tmp_path), config) as machine:
        with pytest.raises(GuestUnresponsive) as err:
            machine.run("cat", timeout=1)  # reads the console forever
        assert err.value.reference == "guest-command-timeout"
        assert "did not answer" not in err.value.message  # ^C worked
        assert not machine.clean  # a caller that needs a known state boots a fresh guest
        assert machine.run("echo again") == ("again\n", 0)


def test_a_silent_console_is_noticed_before_the_command_budget(tmp_path):
    timeouts = Timeouts(boot_s=60, command_s=600, inactivity_s=2, interrupt_s=6, poweroff_s=10)
    config = MachineConfig(qemu=fake_qemu(tmp_path, READY_SHELL), timeouts=timeouts)
    with Machine(fake_image(tmp_path), config) as machine:
        with pytest.raises(GuestUnresponsive) as err:
            machine.run("sleep 60")
        assert err.value.reference == "guest-console-silent"
    with Machine(fake_image(tmp_path), config) as machine:  # a fresh one: the last was interrupted
        # a command that keeps printing is not silent, even well past the inactivity budget (gaps
        # of 0.1 s against 2 s: a margin no loaded machine eats)
        out, status = machine.run("i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo $i; sleep 0.1; done")
        assert status == 0 and out.split() == [str(i) for i in range(1, 41)]


def test_the_session_hard_cap_bounds_every_wait(tmp_path):
    import time

    offset = [0.0]

    def clock() -> float:
        return time.monotonic() + offset[0]

    timeouts = Timeouts(boot_s=60, command_s=600, inactivity_s=600, interrupt_s=1.5, poweroff_s=10, session_s=100)
    config = MachineConfig(qemu=fake_qemu(tmp_path, READY_SHELL), timeouts=timeouts)
    with Machine(fake_image(tmp_path), config, clock=clock) as machine:
        offset[0] = 100.0  # the session's budget is spent: the next command gets no time at all
        with pytest.raises(GuestUnresponsive) as err:
            machine.run("echo late")
        assert err.value.reference == "guest-command-timeout"


@pytest.mark.parametrize("before, body, reference, context", [
    ("echo 'qemu-system-aarch64: unable to find CPU model' >&2; exit 1", "", "qemu-exited-early",
     "unable to find CPU model"),
    # a panicking guest ends QEMU (panic=-1, -no-reboot), and so does /init giving up (poweroff)
    ("", "echo '[ 1.9] Kernel panic - not syncing: No working init found.'", "guest-kernel-panic",
     "No working init found"),
    ("", "echo 'Initramfs unpacking failed: write error'; exec cat", "initramfs-unpack-failed", "write error"),
    ("", f"echo '{initramfs.INIT_FAILED} the overlay sentinel is missing'", "guest-init-failed", "sentinel"),
    ("", f"echo '{initramfs.READY} 0123456789abcdef'; exec /bin/sh -i", "guest-overlay-mismatch",
     "0123456789abcdef"),
    ("", "exec cat", "qemu-boot-timeout", None),
    # QEMU killed from outside during boot: the signal is named, with the console so far
    ("", "echo 'EFI stub: booting'; kill -9 $PPID; sleep 5", "qemu-exited-early", "SIGKILL"),
])
def test_boot_failures_are_typed_and_carry_context(tmp_path, before, body, reference, context):
    timeouts = Timeouts(boot_s=3, command_s=10, inactivity_s=10, interrupt_s=2, poweroff_s=2)
    config = MachineConfig(qemu=fake_qemu(tmp_path, body, before), timeouts=timeouts)
    machine = Machine(fake_image(tmp_path), config)
    with pytest.raises(BootFailed) as err:
        machine.start()
    assert err.value.reference == reference
    if context:
        assert any(context in line for line in [err.value.message, *err.value.context]), err.value.render()
    assert machine._child is None and machine.transport.proc is None  # QEMU is gone after a failed boot


def test_machine_without_qemu_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError) as err:
        Machine(fake_image(tmp_path), MachineConfig(qemu=str(tmp_path / "nope"))).start()
    assert err.value.reference == "qemu-not-found" and "setup.sh" in err.value.hint


# ------------------------------------------------------------------------------ CLI
def built_image_dir(tmp_path: Path) -> Path:
    out = tmp_path / "build"
    out.mkdir()
    for name in ("vmlinuz", "initrd.cpio", "base.cpio"):
        (out / name).write_bytes(b"")
    (out / "manifest.json").write_text(f'{{"overlay_id": "{OVERLAY_ID}", "source_date_epoch": 0}}')
    return out


def test_cli_dry_run_prints_the_qemu_and_guest_commands(tmp_path, capsys):
    out = built_image_dir(tmp_path)
    assert cli.main(["run", "--dry-run", "--out", str(out), "images/hello.yaml", "--dump-caps"]) == 0
    printed = capsys.readouterr().out
    assert "qemu-system-aarch64 -M virt" in printed and f"-initrd {out}/initrd.cpio" in printed
    assert "l4emu boot images/hello.yaml --dump-caps" in printed


def test_cli_run_exits_with_the_guest_status_and_keeps_a_run_record(tmp_path, capsys):
    import json

    out = built_image_dir(tmp_path)
    qemu = fake_qemu(tmp_path, READY_SHELL)  # its `l4emu` prints one line and exits 1
    runs = tmp_path / "runs"
    status = cli.main(["run", "--qemu", qemu, "--no-refresh", "--quiet", "--runs", str(runs), "--out", str(out),
                       "images/hello.yaml"])
    assert status == 1
    assert "exited with status 1" in capsys.readouterr().err
    (run,) = runs.iterdir()
    record = json.loads((run / "run.json").read_text())
    assert record["verdict"] == "failed" and record["status"] == 1
    assert record["commands"][0]["command"] == "l4emu boot images/hello.yaml"
    assert record["initrd"]["sha256"] and record["kernel"]["sha256"] and "qemu_version" in record
    assert "5 calls answered" in (run / "transcript.log").read_text()
    assert (run / "qemu-stderr.log").exists()
    cmdline = (run / "qemu-cmdline.sh").read_text()
    assert "-chardev stdio,id=console,signal=off" in cmdline and str(out / "vmlinuz") in cmdline


def test_cli_exit_codes_for_boot_failure_bad_images_and_harness_errors(tmp_path, capsys):
    out = built_image_dir(tmp_path)
    panic = fake_qemu(tmp_path, "echo 'Kernel panic - not syncing: x'")
    common = ["--no-refresh", "--quiet", "--no-record"]
    assert cli.main(["run", "--qemu", panic, *common, "--out", str(out), "images/hello.yaml"]) \
        == cli.Exit.QEMU_DID_NOT_BOOT
    assert cli.main(["run", *common, "--out", str(tmp_path / "empty"), "images/hello.yaml"]) == cli.Exit.HARNESS
    assert cli.main(["run", "--dry-run", "--out", str(out), "/etc/hostname"]) == cli.Exit.HARNESS
    # a missing or invalid system image is 2, as for `l4emu boot`, and nothing boots
    assert cli.main(["run", "--qemu", panic, *common, "--out", str(out), "images/nope.yaml"]) == cli.Exit.BAD_IMAGE
    bad = PROJECT_ROOT / "tests" / "hil" / "data" / "invalid.yaml"
    assert cli.main(["run", "--qemu", panic, *common, "--out", str(out), str(bad)]) == cli.Exit.BAD_IMAGE
    err = capsys.readouterr().err
    for ref in ("[guest-kernel-panic]", "[image-not-built]", "[image-outside-project]", "[image-file-missing]",
                "[image-invalid]"):
        assert ref in err, ref


def test_l4emu_hil_is_wired_into_the_cli(capsys):
    from l4emu.cli import main as l4emu

    assert l4emu(["hil", "run", "--help"]) == 0  # --help reaches the hil parser unparsed
    assert "usage: l4emu hil run" in capsys.readouterr().out
    assert l4emu(["hil", "run", "--no-record", "images/nope.yaml"]) == cli.Exit.BAD_IMAGE


def test_the_bounded_wvds_is_wvds_with_a_gateway_that_stops(tmp_path):
    """HIL tests and the bench boot wvds through hil.qemu.bounded: the shipped image, ending by itself."""
    import shutil
    import subprocess
    import sys

    import yaml

    from hil.qemu import bounded
    from kernel_model.host.images import load_image

    images = tmp_path / "images"
    shutil.copytree(PROJECT_ROOT / "images", images)
    (tmp_path / "var" / "est-ca").mkdir(parents=True)
    (tmp_path / "var" / "est-ca" / "ca.crt").write_text("the CA's trust anchor, a boot module")
    argv = bounded.command(batches=2).split()
    assert argv[0] == "python3"  # as the guest runs it
    subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, check=True, env={"PYTHONPATH": str(PROJECT_ROOT)})
    made = tmp_path / bounded.BOUNDED_WVDS
    loaded = load_image(made)  # valid, and its modules resolve beside the original
    original = load_image(images / "wvds.yaml")
    assert [t.name for t in loaded.image.tasks] == [t.name for t in original.image.tasks]
    assert [(t.name, t.caps) for t in loaded.image.tasks] == [(t.name, t.caps) for t in original.image.tasks]
    doc = yaml.safe_load(made.read_text())
    assert doc["tasks"]["gateway"]["config"]["outbox"]["batches"] == 2
    assert doc["run"]["until"] == ["gateway"]  # the gateway's end ends the system
    with pytest.raises(ValueError):
        bounded.bounded(doc, 0)
