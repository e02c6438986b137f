"""``l4emu hil``: build the aarch64 guest, boot it, run the l4emu system inside it.

    l4emu hil lock                          # pin every input (kernel, .debs, wheels) in hil/qemu/lock.json
    l4emu hil build                         # hil/build/: kernel + initramfs from the lock (downloads verified)
    l4emu hil run images/hello.yaml         # boot the guest, run `l4emu boot images/hello.yaml` in it
    l4emu hil run images/wvds.yaml --est-ca 127.0.0.1:8443   # the EST CA runs on the host, as for `make boot`
    l4emu hil run --serial /dev/ttyUSB0 images/hello.yaml     # a real board on its serial console
    l4emu hil shell                         # the guest's console on this terminal (Ctrl-] leaves)
    l4emu hil export labgrid|lava           # the same guest for labgrid or a LAVA lab

Exit status of ``run``: the guest-side ``l4emu boot`` status (0 ok, 1 tasks failed, 2 invalid
image, 124 timeout, ...: "the target failed the check"), or 3 when QEMU did not boot the
guest, 4 for a harness error (tools missing, image not built, a bug here), 5 when the guest
stopped answering. An IMAGE that does not exist or is invalid is checked on the host first and
exits 2, as ``l4emu boot`` does. One error boundary: ``main``.
"""
from __future__ import annotations

import argparse
import contextlib
import enum
import shlex
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from hil.qemu.errors import HarnessError, HilError
from protocols.exit_codes import ExitCode


class Exit(enum.IntEnum):
    """``l4emu hil``'s statuses: the names of protocols/exit_codes.py that it uses."""

    OK = ExitCode.OK
    BAD_IMAGE = ExitCode.BAD_INPUT  #: the system image is missing or invalid (as `l4emu boot`)
    QEMU_DID_NOT_BOOT = ExitCode.QEMU_DID_NOT_BOOT
    HARNESS = ExitCode.HARNESS  #: the host side failed (tools, image not built)
    GUEST_UNRESPONSIVE = ExitCode.GUEST_UNRESPONSIVE
    INTERRUPTED = ExitCode.INTERRUPTED
    BUG = ExitCode.BUG  #: a bug in hil/qemu (the traceback is printed)


class BadImage(HilError):
    """The system image to boot in the guest is missing or invalid: exit 2, like `l4emu boot`."""

    exit_code = Exit.BAD_IMAGE


def guest_image_path(image: str, project_root: Path, cwd: Path | None = None) -> str:
    """``IMAGE`` as the guest sees it: relative to the project, whose source tree the guest holds."""
    path = Path(image)
    absolute = (path if path.is_absolute() else (cwd or Path.cwd()) / path).resolve()
    if not absolute.is_file():
        raise BadImage("image-file-missing", f"{image} does not exist")
    try:
        rel = absolute.relative_to(project_root)
    except ValueError:
        raise HarnessError("image-outside-project", f"{image} is not inside the project ({project_root})",
                           hint="the guest gets the project's source tree; put the image under it") from None
    return rel.as_posix()


def check_image(path: Path) -> None:
    """Validate IMAGE on the host before booting anything (same check as `l4emu boot`)."""
    from capabilities.image import ImageError
    from kernel_model.host.images import load_image  # the I/O half of capabilities.image

    try:
        load_image(path)
    except ImageError as exc:
        raise BadImage("image-invalid", f"{path} is not a valid system image",
                       context=[str(p) for p in exc.problems]) from None


def boot_command(image: str, boot_args: list[str]) -> str:
    return shlex.join(["l4emu", "boot", image, *boot_args])


def split_est_ca(boot_args: list[str]) -> tuple[str | None, list[str]]:
    """``--est-ca HOST:PORT`` among the boot arguments means the host's CA (as `make boot` starts it)."""
    rest, est_ca, i = [], None, 0
    while i < len(boot_args):
        arg = boot_args[i]
        if arg == "--est-ca" and i + 1 < len(boot_args):
            est_ca, i = boot_args[i + 1], i + 2
            continue
        if arg.startswith("--est-ca="):
            est_ca = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return est_ca, rest


def _timeouts(args: argparse.Namespace):
    from hil.qemu.timeouts import Timeouts

    timeouts = Timeouts.from_env()
    if args.timeout_multiplier is not None:
        timeouts = timeouts.with_multiplier(args.timeout_multiplier)
    return timeouts


def _config(args: argparse.Namespace, est_ca: str | None = None, guest_port: int | None = None):
    from hil.qemu.machine import MachineConfig

    return MachineConfig(qemu=args.qemu, cpu=args.cpu, memory_mib=args.memory, smp=args.smp,
                         timeouts=_timeouts(args), est_ca=est_ca, est_ca_guest_port=guest_port)


def cmd_lock(args: argparse.Namespace) -> int:
    from hil.qemu.build import write_lock

    write_lock(args.path)
    return Exit.OK


def cmd_build(args: argparse.Namespace) -> int:
    from hil.qemu.build import build

    started = time.monotonic()
    image = build(args.out)
    print(f"hil: image ready in {time.monotonic() - started:.1f} s: {image.kernel} + {image.initrd} "
          f"({image.initrd.stat().st_size / 2**20:.1f} MiB), overlay {image.overlay_id}")
    return Exit.OK


@contextlib.contextmanager
def host_est_ca(address: str | None, image: Path, state_dir: Path | None = None):
    """The development EST CA on the host's loopback, exactly as `l4emu boot --est-ca` starts it
    (same state directory, the image's HTTP Basic credentials)."""
    if address is None:
        yield None
        return
    from hil.est_ca import EstCaError
    from hil.est_ca.binding import EstBindingError, host_port, image_auth, load_doc, start_dev_ca
    from hil.qemu.build import PROJECT_ROOT

    try:
        host, port = host_port(address, "--est-ca", any_port=True)
        auth = image_auth(load_doc(image))
        with start_dev_ca(host, port, state_dir=state_dir or PROJECT_ROOT / "var" / "est-ca", auth=auth,
                          announce=lambda line: print(f"hil: {line}", file=sys.stderr)) as server:
            yield server
    except (EstBindingError, EstCaError) as exc:
        raise HarnessError("est-ca-failed", str(exc), hint="is another CA already serving that port?") from None


def cmd_run(args: argparse.Namespace) -> int:
    from hil.qemu.build import PROJECT_ROOT, Image, refresh
    from hil.qemu.machine import Machine, qemu_argv
    from hil.qemu.record import RunRecord

    est_ca, boot_args = split_est_ca(args.boot_args)
    if args.est_ca:
        est_ca = args.est_ca
    guest_image = guest_image_path(args.image, PROJECT_ROOT)
    command = boot_command(guest_image, boot_args)
    config = _config(args, est_ca if not args.serial else None)
    if args.dry_run:
        built = Image.load(args.out)
        print(shlex.join(qemu_argv(built.kernel, built.initrd, config)))
        print(f"# then, in the guest: {command}")
        return Exit.OK
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(host_est_ca(est_ca if not args.serial else None, PROJECT_ROOT / guest_image))
        if server is not None:  # the CA may listen elsewhere than where the guest's tasks connect
            from hil.qemu.relay import parse_address

            assert est_ca is not None  # host_est_ca serves only then
            config = _config(args, f"{server.host}:{server.port}", parse_address(est_ca)[1])
        check_image(PROJECT_ROOT / guest_image)  # after the CA: its trust anchor is one of wvds' modules
        record = None if args.no_record else RunRecord.create(args.runs, label="run")
        if record is not None:
            print(f"hil: run record in {record.dir}", file=sys.stderr)
        console = None if args.quiet else sys.stdout
        log_path = args.log or (record.transcript if record else None)
        image: Image | None
        if args.serial:
            machine = Machine.serial(args.serial, config, baud=args.baud, log_path=log_path, console=console)
            image = None
        else:
            extra = {}
            if est_ca is not None:
                ta = PROJECT_ROOT / "var" / "est-ca" / "ca.crt"
                extra["var/est-ca/ca.crt"] = ta.read_bytes()  # the trust anchor only, never the CA key
            image = Image.load(args.out) if args.no_refresh else refresh(
                args.out, extra_files=extra, log=lambda line: print(f"hil: {line}", file=sys.stderr))
            if not args.no_refresh:
                stack.callback(shutil.rmtree, image.initrd.parent, True)
            machine = Machine(image, config, log_path=log_path, console=console,
                              stderr_path=record.qemu_stderr if record else None)
        if record is not None:
            record.machine(qemu=None if args.serial else args.qemu, argv=machine.argv,
                           kernel=image.kernel if image else None, initrd=image.initrd if image else None,
                           manifest=image.manifest if image else None, multiplier=config.timeout_multiplier,
                           person_argv=qemu_argv(image.kernel, image.initrd, config) if image else None,
                           base=args.out / "base.cpio")
        verdict, status = "error", None
        try:
            with machine:
                if record is not None:
                    assert machine.boot_seconds is not None  # set once the guest is ready
                    record.data.update(boot_s=round(machine.boot_seconds, 2), overlay_id=machine.overlay_id)
                print(f"\nhil: guest ready after {machine.boot_seconds:.2f} s; running: {command}", file=sys.stderr)
                if config.est_ca is not None:
                    start_guest_relay(machine, config.guest_port)
                started = time.monotonic()
                try:
                    _, status = machine.run(command, timeout=args.timeout)
                finally:
                    if record is not None:
                        record.command(command, status, time.monotonic() - started)
                print(f"\nhil: `{command}` exited with status {status} after {time.monotonic() - started:.2f} s "
                      f"in the guest", file=sys.stderr)
                verdict = "passed" if status == 0 else "failed"
        except HilError as exc:
            verdict = exc.reference
            raise
        finally:
            if record is not None:
                record.finish(verdict, status=status)
    return status


def start_guest_relay(machine, port: int) -> None:
    """In the guest: 127.0.0.1:PORT -> 10.0.2.100:PORT (QEMU's guestfwd -> the host's CA)."""
    from hil.qemu.relay import GUESTFWD_ADDRESS, READY

    log = "/tmp/relay.log"
    out, status = machine.run(
        f"(python3 -I /opt/l4emu/hil/qemu/relay.py listen 127.0.0.1:{port} {GUESTFWD_ADDRESS}:{port} "
        f">{log} 2>&1 &); i=0; until grep -q {READY} {log} 2>/dev/null; do i=$((i+1)); "
        f"[ $i -gt 600 ] && cat {log} && exit 1; sleep 0.2; done", timeout=180)
    if status != 0:
        raise HarnessError("guest-relay-failed", "the guest's relay to the host's EST CA did not start",
                           context=out.splitlines()[-20:])


def cmd_shell(args: argparse.Namespace) -> int:
    from hil.qemu.build import Image, refresh
    from hil.qemu.machine import Machine

    if not sys.stdin.isatty():
        raise HarnessError("shell-needs-a-terminal", "`l4emu hil shell` needs an interactive terminal")
    image = Image.load(args.out) if args.no_refresh else refresh(args.out)
    try:
        with Machine(image, _config(args), log_path=args.log) as machine:
            print(f"hil: guest ready after {machine.boot_seconds:.2f} s; Ctrl-] leaves (the guest is powered off)")
            machine.interact()
    finally:
        if not args.no_refresh:
            shutil.rmtree(image.initrd.parent, ignore_errors=True)
    return Exit.OK


def cmd_export(args: argparse.Namespace) -> int:
    from hil.qemu import export
    from hil.qemu.build import Image

    image = Image.load(args.out)
    text = export.labgrid_env(image, _config(args)) if args.tool == "labgrid" else \
        export.lava_job(image, _config(args), command=boot_command(args.image, []), base_url=args.base_url)
    if args.output in (None, Path("-")):
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"hil: wrote {args.output}", file=sys.stderr)
    return Exit.OK


def build_parser() -> argparse.ArgumentParser:
    from hil.qemu.build import DEFAULT_OUT
    from hil.qemu.lock import LOCK_PATH
    from hil.qemu.record import DEFAULT_RUNS

    parser = argparse.ArgumentParser(
        prog="l4emu hil", description="Hardware in the loop: the same l4emu system inside an aarch64 QEMU guest "
                                      "(Debian arm64 kernel, Python 3.11, TCG) or on a real board. See docs/hil.md.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    machine = argparse.ArgumentParser(add_help=False)
    machine.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"image directory (default {DEFAULT_OUT})")
    machine.add_argument("--qemu", default="qemu-system-aarch64", metavar="BINARY", help="the QEMU to run")
    machine.add_argument("--cpu", default="cortex-a72", help="QEMU CPU model (default cortex-a72; never 'max')")
    machine.add_argument("--memory", type=int, default=1024, metavar="MIB", help="guest RAM (>= 512)")
    machine.add_argument("--smp", type=int, default=1, help="vCPUs (default 1)")
    machine.add_argument("--timeout-multiplier", type=float, default=None, metavar="X",
                         help="scale every wait (boot, commands, poweroff); default $L4EMU_HIL_TIMEOUT_MULTIPLIER or 1")
    machine.add_argument("--log", type=Path, default=None, metavar="FILE", help="keep the serial transcript here too")
    machine.add_argument("--no-refresh", action="store_true",
                         help="boot the image as built; by default a fresh project overlay is built for this run")

    lock = sub.add_parser("lock", help="pin the guest's inputs (kernel, .debs, wheels, sha256) in the lock file",
                          description="Resolve the package index's candidate versions and this environment's "
                                      "wheel versions, hash them and write the lock file.")
    lock.add_argument("--path", type=Path, default=LOCK_PATH)
    lock.set_defaults(func=cmd_lock)

    build = sub.add_parser("build", help="build the guest image (kernel + initramfs) from the lock into hil/build/",
                           description="Download (once; cached, sha256-checked on every use) the locked Debian "
                                       "arm64 kernel and userland and the wheels, check every ELF's libraries, and "
                                       "write a reproducible initramfs.")
    build.add_argument("--out", type=Path, default=DEFAULT_OUT)
    build.set_defaults(func=cmd_build)

    run = sub.add_parser("run", parents=[machine], help="boot the guest and run `l4emu boot IMAGE` inside it",
                         description="Boot the guest, run `l4emu boot IMAGE [BOOT_ARGS...]` in it with the "
                                     "serial console streamed here, power off. Exits with the guest command's "
                                     "status; 2: IMAGE missing or invalid, 3: QEMU did not boot, 4: harness "
                                     "error, 5: guest unresponsive. `--est-ca HOST:PORT` (before IMAGE or among "
                                     "the boot arguments) starts the development EST CA on the host and lets the "
                                     "guest reach exactly that port.")
    run.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                     help="how long the guest command may take (x the multiplier; default 600)")
    run.add_argument("--est-ca", default=None, metavar="HOST:PORT", help="the host's EST CA for the guest")
    run.add_argument("--serial", default=None, metavar="DEVICE",
                     help="drive a real board on this serial device instead of QEMU (it must boot the HIL image)")
    run.add_argument("--baud", type=int, default=115200)
    run.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help=f"run records (default {DEFAULT_RUNS})")
    run.add_argument("--no-record", action="store_true", help="keep no run record")
    run.add_argument("--quiet", action="store_true", help="do not stream the console")
    run.add_argument("--dry-run", action="store_true", help="print the QEMU command line and the guest command")
    run.add_argument("image", help="system image inside the project, e.g. images/hello.yaml")
    run.add_argument("boot_args", nargs=argparse.REMAINDER, help="passed on to `l4emu boot` in the guest")
    run.set_defaults(func=cmd_run)

    shell = sub.add_parser("shell", parents=[machine], help="boot the guest and attach this terminal to it")
    shell.set_defaults(func=cmd_shell)

    export = sub.add_parser("export", parents=[machine], help="write a labgrid environment or a LAVA job",
                            description="labgrid: an environment YAML with a QEMUDriver target booting the built "
                                        "kernel and initramfs. lava: a job for LAVA's qemu device type.")
    export.add_argument("tool", choices=["labgrid", "lava"])
    export.add_argument("-o", "--output", type=Path, default=None, help="file to write (default: stdout)")
    export.add_argument("--image", default="images/hello.yaml", help="system image the LAVA job boots")
    export.add_argument("--base-url", default=None,
                        help="where the lab downloads vmlinuz and initrd.cpio from (default: file:// URLs)")
    export.set_defaults(func=cmd_export)
    return parser


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds every `with`: QEMU is stopped, the run record finished


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args))
    except HilError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except Exception:
        traceback.print_exc()
        print("error: unexpected failure in hil/qemu (a bug; the traceback is above) [harness-bug]", file=sys.stderr)
        return Exit.BUG


if __name__ == "__main__":
    sys.exit(main())
