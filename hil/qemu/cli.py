"""``l4emu hil``: build the aarch64 guest, boot it, run the l4emu system inside it.

    l4emu hil build                         # hil/build/: kernel + initramfs (downloads cached)
    l4emu hil run images/hello.yaml         # boot the guest, run `l4emu boot images/hello.yaml` in it
    l4emu hil run images/wvds.yaml --est-ca 127.0.0.1:8443   # arguments after IMAGE go to `l4emu boot`
    l4emu hil shell                         # the guest's console on this terminal (Ctrl-] leaves)

Exit status of ``run``: the guest-side ``l4emu boot`` status (0 ok, 1 tasks failed, 2
invalid image, 124 timeout, ...: "the target failed the check"), or 3 when QEMU did not
boot the guest, 4 for a harness error (tools missing, image not built, a bug here), 5 when
the guest stopped answering. One error boundary: ``main``.
"""
from __future__ import annotations

import argparse
import enum
import shlex
import sys
import time
import traceback
from pathlib import Path

from hil.qemu.errors import HarnessError, HilError


class Exit(enum.IntEnum):
    OK = 0
    QEMU_DID_NOT_BOOT = 3  #: no ready marker: QEMU failed, the kernel panicked, the initramfs broke
    HARNESS = 4  #: the host side failed (tools, image not built, bug in hil/qemu)
    GUEST_UNRESPONSIVE = 5  #: booted, then a command did not finish or QEMU died
    INTERRUPTED = 130


def guest_image_path(image: str, project_root: Path, cwd: Path | None = None) -> str:
    """``IMAGE`` as the guest sees it: relative to the project, whose source tree the guest holds."""
    path = Path(image)
    absolute = (path if path.is_absolute() else (cwd or Path.cwd()) / path).resolve()
    try:
        rel = absolute.relative_to(project_root)
    except ValueError:
        raise HarnessError("image-outside-project", f"{image} is not inside the project ({project_root})",
                           hint="the guest gets the project's source tree; put the image under it") from None
    if not absolute.is_file():
        raise HarnessError("image-file-missing", f"{image} does not exist")
    return rel.as_posix()


def boot_command(image: str, boot_args: list[str]) -> str:
    return shlex.join(["l4emu", "boot", image, *boot_args])


def _config(args: argparse.Namespace):
    from hil.qemu.machine import MachineConfig

    return MachineConfig(qemu=args.qemu, cpu=args.cpu, memory_mib=args.memory, smp=args.smp,
                         timeout_multiplier=args.timeout_multiplier)


def cmd_build(args: argparse.Namespace) -> int:
    from hil.qemu.build import build

    started = time.monotonic()
    image = build(args.out)
    print(f"hil: image ready in {time.monotonic() - started:.1f} s: {image.kernel} + {image.initrd} "
          f"({image.initrd.stat().st_size / 2**20:.1f} MiB), overlay {image.overlay_id}")
    return Exit.OK


def cmd_run(args: argparse.Namespace) -> int:
    from hil.qemu.build import PROJECT_ROOT, Image, refresh
    from hil.qemu.machine import Machine, qemu_argv

    guest_image = guest_image_path(args.image, PROJECT_ROOT)
    command = boot_command(guest_image, args.boot_args)
    if args.dry_run:
        image = Image.load(args.out)
        print(shlex.join(qemu_argv(image.kernel, image.initrd, _config(args))))
        print(f"# then, in the guest: {command}")
        return Exit.OK
    image = Image.load(args.out) if args.no_refresh else refresh(args.out, log=lambda line: print(f"hil: {line}"))
    console = None if args.quiet else sys.stdout
    with Machine(image, _config(args), log_path=args.log, console=console) as machine:
        print(f"\nhil: guest ready after {machine.boot_seconds:.2f} s; running: {command}", file=sys.stderr)
        started = time.monotonic()
        _, status = machine.run(command, timeout=args.timeout)
        print(f"\nhil: `{command}` exited with status {status} after {time.monotonic() - started:.2f} s "
              f"in the guest", file=sys.stderr)
    return status


def cmd_shell(args: argparse.Namespace) -> int:
    from hil.qemu.build import Image, refresh
    from hil.qemu.machine import Machine

    image = Image.load(args.out) if args.no_refresh else refresh(args.out)
    if not sys.stdin.isatty():
        raise HarnessError("shell-needs-a-terminal", "`l4emu hil shell` needs an interactive terminal")
    with Machine(image, _config(args), log_path=args.log) as machine:
        print(f"hil: guest ready after {machine.boot_seconds:.2f} s; Ctrl-] leaves (the guest is powered off)")
        machine.interact()
    return Exit.OK


def build_parser() -> argparse.ArgumentParser:
    from hil.qemu.build import DEFAULT_OUT

    parser = argparse.ArgumentParser(
        prog="l4emu hil", description="Hardware in the loop: the same l4emu system inside an aarch64 QEMU guest "
                                      "(Debian arm64 kernel, Python 3.11, TCG). See docs/hil.md.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    machine = argparse.ArgumentParser(add_help=False)
    machine.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"image directory (default {DEFAULT_OUT})")
    machine.add_argument("--qemu", default="qemu-system-aarch64", metavar="BINARY", help="the QEMU to run")
    machine.add_argument("--cpu", default="cortex-a72", help="QEMU CPU model (default cortex-a72; never 'max')")
    machine.add_argument("--memory", type=int, default=1024, metavar="MIB", help="guest RAM (>= 512)")
    machine.add_argument("--smp", type=int, default=1, help="vCPUs (default 1)")
    machine.add_argument("--timeout-multiplier", type=float, default=1.0, metavar="X",
                         help="scale every wait (boot, commands, poweroff) for slow hosts")
    machine.add_argument("--log", type=Path, default=None, metavar="FILE", help="keep the serial transcript")
    machine.add_argument("--no-refresh", action="store_true",
                         help="boot the image as built; by default the project overlay is rebuilt first (~0.5 s)")

    build = sub.add_parser("build", help="build the guest image (kernel + initramfs) into hil/build/",
                           description="Download (once; cached) the Debian arm64 kernel and userland and the "
                                       "aarch64 wheels, check every ELF's libraries, and write the initramfs.")
    build.add_argument("--out", type=Path, default=DEFAULT_OUT)
    build.set_defaults(func=cmd_build)

    run = sub.add_parser("run", parents=[machine], help="boot the guest and run `l4emu boot IMAGE` inside it",
                         description="Boot the guest, run `l4emu boot IMAGE [BOOT_ARGS...]` in it with the "
                                     "serial console streamed here, power off. Exits with the guest command's "
                                     "status; 3: QEMU did not boot, 4: harness error, 5: guest unresponsive.")
    run.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                     help="how long the guest command may take (x the multiplier; default 600)")
    run.add_argument("--quiet", action="store_true", help="do not stream the console")
    run.add_argument("--dry-run", action="store_true", help="print the QEMU command line and the guest command")
    run.add_argument("image", help="system image inside the project, e.g. images/hello.yaml")
    run.add_argument("boot_args", nargs=argparse.REMAINDER, help="passed on to `l4emu boot` in the guest")
    run.set_defaults(func=cmd_run)

    shell = sub.add_parser("shell", parents=[machine], help="boot the guest and attach this terminal to it")
    shell.set_defaults(func=cmd_shell)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except HilError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except Exception:  # noqa: BLE001 - a bug in the harness: say so, with the traceback
        traceback.print_exc()
        print("error: unexpected failure in hil/qemu [harness-bug]", file=sys.stderr)
        return Exit.HARNESS


if __name__ == "__main__":
    sys.exit(main())
