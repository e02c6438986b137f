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
import re
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from hil.qemu import cli, fetch, initramfs
from hil.qemu.build import PROJECT_ROOT, Image
from hil.qemu.errors import BootFailed, GuestUnresponsive, HarnessError, HilError
from hil.qemu.machine import (Machine, MachineConfig, command_line, command_output, normalise, qemu_argv,
                              tail)

OVERLAY_ID = "feedfacecafe0001"


# ----------------------------------------------------------------------- QEMU argv
def test_qemu_argv_is_the_recommended_machine_as_a_list():
    argv = qemu_argv(Path("/img/vmlinuz"), Path("/img/initrd.cpio"))
    assert argv[0] == "qemu-system-aarch64"
    joined = " ".join(argv)
    for flags in ("-M virt", "-cpu cortex-a72", "-smp 1", "-m 1024", "-nic none", "-no-reboot",
                  "-monitor none", "-chardev stdio,id=console,signal=off", "-serial chardev:console",
                  "-kernel /img/vmlinuz", "-initrd /img/initrd.cpio"):
        assert flags in joined, flags
    assert argv[argv.index("-append") + 1] == "console=ttyAMA0 rdinit=/init quiet panic=-1"


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
    entries, pos = [], 0
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
def fake_qemu(tmp_path: Path, body: str) -> str:
    """A stand-in for qemu-system-aarch64 (it ignores its argv): ``body`` is its console."""
    rc = tmp_path / "guest-rc"
    rc.write_text("poweroff() { exit 0; }\nl4emu() { echo \"client  | 5 calls answered\"; return 1; }\n")
    script = tmp_path / "fake-qemu"
    script.write_text(f"#!/bin/sh\nexport ENV={rc}\n{body}\n")
    script.chmod(0o755)
    return str(script)


def fake_image(tmp_path: Path) -> Image:
    return Image(tmp_path / "vmlinuz", tmp_path / "initrd.cpio", OVERLAY_ID, {})


READY_SHELL = f'echo "{initramfs.READY} {OVERLAY_ID}"\nexec /bin/sh -i'


def test_machine_runs_commands_and_returns_output_and_status(tmp_path):
    config = MachineConfig(qemu=fake_qemu(tmp_path, READY_SHELL))  # nothing here waits for a timeout
    log = tmp_path / "console.log"
    machine = Machine(fake_image(tmp_path), config, log_path=log)
    with machine:
        assert machine.run("echo hello; echo world") == ("hello\nworld\n", 0)
        assert machine.run("printf 'no newline'") == ("no newline", 0)
        assert machine.run("f() { return 3; }; f") == ("", 3)
    machine.stop()  # safe twice
    with pytest.raises(HarnessError) as err:
        machine.run("true")
    assert err.value.reference == "machine-not-started"
    assert "BEGIN-2" in log.read_text()


def test_machine_interrupts_a_hung_command_and_stays_usable(tmp_path):
    config = MachineConfig(qemu=fake_qemu(tmp_path, READY_SHELL))
    with Machine(fake_image(tmp_path), config) as machine:
        with pytest.raises(GuestUnresponsive) as err:
            # reads the console forever; only this command's own timeout is short: the ^C that
            # follows gets the full (unscaled) recovery wait, however loaded the machine is
            machine.run("cat", timeout=0.2)
        assert err.value.reference == "guest-command-timeout"
        assert "did not answer" not in err.value.message  # ^C worked
        assert machine.run("echo again") == ("again\n", 0)


@pytest.mark.parametrize("body, reference, context", [
    ("echo 'qemu-system-aarch64: unable to find CPU model' >&2; exit 1", "qemu-exited-early",
     "unable to find CPU model"),
    # a panicking guest ends QEMU (panic=-1, -no-reboot), and so does /init giving up (poweroff)
    ("echo '[ 1.9] Kernel panic - not syncing: No working init found.'", "guest-kernel-panic",
     "No working init found"),
    ("echo 'Initramfs unpacking failed: write error'; exec cat", "initramfs-unpack-failed", "write error"),
    (f"echo '{initramfs.INIT_FAILED} the overlay sentinel is missing'", "guest-init-failed", "sentinel"),
    (f"echo '{initramfs.READY} 0123456789abcdef'; exec /bin/sh -i", "guest-overlay-mismatch",
     "0123456789abcdef"),
    ("exec cat", "qemu-boot-timeout", None),
])
def test_boot_failures_are_typed_and_carry_the_console_tail(tmp_path, body, reference, context):
    # Only the boot timeout case waits for the timeout (0.3 s); every other failure is seen in
    # the console long before the unscaled 60 s, however slowly the fake QEMU starts.
    config = MachineConfig(qemu=fake_qemu(tmp_path, body),
                           timeout_multiplier=0.005 if reference == "qemu-boot-timeout" else 1.0)
    machine = Machine(fake_image(tmp_path), config)
    with pytest.raises(BootFailed) as err:
        machine.start()
    assert err.value.reference == reference
    if context:
        assert any(context in line for line in err.value.context)
    assert machine._child is None  # QEMU is gone after a failed boot


def test_machine_without_qemu_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError) as err:
        Machine(fake_image(tmp_path), MachineConfig(qemu=str(tmp_path / "nope"))).start()
    assert err.value.reference == "qemu-not-found" and "setup.sh" in err.value.hint


# ------------------------------------------------------------------------------ CLI
def built_image_dir(tmp_path: Path) -> Path:
    out = tmp_path / "build"
    out.mkdir()
    for name in ("vmlinuz", "initrd.cpio"):
        (out / name).write_bytes(b"")
    (out / "manifest.json").write_text(f'{{"overlay_id": "{OVERLAY_ID}"}}')
    return out


def test_cli_dry_run_prints_the_qemu_and_guest_commands(tmp_path, capsys):
    out = built_image_dir(tmp_path)
    assert cli.main(["run", "--dry-run", "--out", str(out), "images/hello.yaml", "--dump-caps"]) == 0
    printed = capsys.readouterr().out
    assert "qemu-system-aarch64 -M virt" in printed and f"-initrd {out}/initrd.cpio" in printed
    assert "l4emu boot images/hello.yaml --dump-caps" in printed


def test_cli_run_exits_with_the_guest_status(tmp_path, capsys):
    out = built_image_dir(tmp_path)
    qemu = fake_qemu(tmp_path, READY_SHELL)  # its `l4emu` prints one line and exits 1
    status = cli.main(["run", "--qemu", qemu, "--no-refresh", "--quiet",
                       "--out", str(out), "images/hello.yaml"])
    assert status == 1
    assert "exited with status 1" in capsys.readouterr().err


def test_cli_exit_codes_for_boot_failure_and_harness_errors(tmp_path, capsys):
    out = built_image_dir(tmp_path)
    panic = fake_qemu(tmp_path, "echo 'Kernel panic - not syncing: x'")
    assert cli.main(["run", "--qemu", panic, "--no-refresh", "--quiet", "--out", str(out),
                     "images/hello.yaml"]) == cli.Exit.QEMU_DID_NOT_BOOT
    assert cli.main(["run", "--no-refresh", "--out", str(tmp_path / "empty"), "images/hello.yaml"]) == cli.Exit.HARNESS
    assert cli.main(["run", "--dry-run", "--out", str(out), "/etc/hostname"]) == cli.Exit.HARNESS
    err = capsys.readouterr().err
    assert "[guest-kernel-panic]" in err and "[image-not-built]" in err and "[image-outside-project]" in err


# ============================================================== integration (QEMU)
@pytest.fixture(scope="module")
def guest(request):
    """One real aarch64 guest for the module, running the checkout's current source."""
    markexpr = request.config.getoption("markexpr") or ""
    if not re.search(r"(?<!not )\bhil\b", markexpr):
        pytest.skip("HIL tests boot QEMU; select them with `pytest -m hil` (make hil)")
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 is not installed (hil/qemu/setup.sh)")
    try:
        Image.load()
    except HarnessError as exc:
        pytest.skip(f"no HIL image: {exc.message} (l4emu hil build)")
    from hil.qemu.build import refresh

    image = refresh(log=lambda _: None)
    log = PROJECT_ROOT / "hil" / "build" / "test-console.log"
    with Machine(image, log_path=log) as machine:
        yield machine


def boot_in_guest(guest: Machine, image: str, *args: str, timeout: float = 300) -> tuple[str, int]:
    return guest.run(cli.boot_command(image, ["--timeout", str(timeout - 30), *args]), timeout=timeout)


@pytest.mark.hil
def test_guest_is_aarch64_with_python_and_the_wheels(guest):
    out, status = guest.run("uname -m; python3 -c 'import cryptography, yaml, pyseccomp; "
                            "print(cryptography.__version__)'")
    assert status == 0
    from importlib.metadata import version
    assert out.split() == ["aarch64", version("cryptography")]


@pytest.mark.hil
def test_hello_boots_confined_in_the_guest(guest):
    out, status = boot_in_guest(guest, "images/hello.yaml")
    assert status == 0, out
    assert "client  | 5 calls answered" in out
    assert "client  | server answered through shared memory: HELLO THROUGH SHARED MEMORY" in out
    enforced = re.search(r"confinement: enforced ([a-z_, ]+)", out)
    assert enforced, out
    steps = re.findall(r"[a-z_]+", enforced.group(1))
    for step in ("network", "mount_ns", "filesystem", "proc", "credentials", "no_new_privs", "seccomp"):
        assert step in steps, step


@pytest.mark.hil
def test_wvds_crypto_runs_in_the_guest(guest):
    out, status = boot_in_guest(guest, "hil/qemu/images/wvds-crypto.yaml")
    assert status == 0, out
    for line in ("gateway | AES-256-GCM: key", "chunked AES-256-GCM: 200 KiB in 4 chunks, round trip ok",
                 "ML-DSA-65: 3309-byte signature verified", "ML-KEM-768: encapsulated and decapsulated, shared "
                 "secrets match", "gateway | gateway done", "0 denied operation(s)"):
        assert line in out, line


@pytest.mark.hil
def test_full_wvds_with_an_in_guest_est_ca(guest):
    out, status = boot_in_guest(guest, "images/wvds.yaml", "--est-ca", "127.0.0.1:8443", timeout=400)
    assert status == 0, out
    assert "est     | enrolled: serial=" in out
    assert "gateway | device certificate: subject CN=gateway-0001,O=WvdS OEM" in out


@pytest.mark.hil
def test_guest_reports_failure_statuses(guest):
    _, status = guest.run("l4emu boot images/does-not-exist.yaml")
    assert status == 2  # invalid image: nothing started, the status crosses the serial line


@pytest.mark.hil
@pytest.mark.parametrize("suite", ["tests/tasks/runtime/test_confine.py", "tests/capability_violations"])
def test_confinement_and_attack_suites_pass_in_the_guest(guest, suite):
    out, status = guest.run(f"python3 -m pytest -q -p no:cacheprovider {suite}", timeout=600)
    assert status == 0, out
    assert re.search(r"\d+ passed", out) and not re.search(r"\d+ (failed|errors?|skipped)", out), out


@pytest.mark.hil
def test_a_real_guest_that_cannot_start_init_is_a_boot_failure(guest):
    """The same kernel, but rdinit names nothing: the kernel panics and QEMU exits (panic=-1, -no-reboot)."""
    config = MachineConfig(cmdline=("console=ttyAMA0", "rdinit=/nonexistent", "quiet", "panic=-1"))
    with pytest.raises(BootFailed) as err:
        Machine(guest.image, config).start()
    assert err.value.reference == "guest-kernel-panic"
    assert err.value.context
