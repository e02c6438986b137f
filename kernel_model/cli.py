"""``l4emu``: a thin command line over the library. One error boundary, named exit codes."""
from __future__ import annotations

import argparse
import enum
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rich.markup import escape

from capabilities.image import ImageError
from kernel_model.host.boot import BootError


class Exit(enum.IntEnum):
    OK = 0
    TASKS_FAILED = 1  #: the image's tasks finished with a non-zero status
    BAD_INPUT = 2  #: the image (or another input) is invalid; nothing was started
    HALTED = 70  #: the kernel halted (e.g. Sigma0 died)
    TIMEOUT = 124


def render_dump(dump: dict[str, list[dict]], console: Console) -> None:
    for task, rows in dump.items():
        table = Table(title=f"capabilities of {task}", title_justify="left", show_edge=False)
        for col in ("selector", "object", "type", "rights", "label", "derived from"):
            table.add_column(col)
        for row in rows:
            if row["type"] == "memory":
                table.add_row(f"{row['address']:#x}", row["object"], "memory", row["rights"],
                              f"{row['size']} bytes", f"offset {row['offset']:#x}")
            else:
                table.add_row(f"{row['selector']:#x}", row["object"], row["type"], row["rights"],
                              "" if row["label"] is None else f"{row['label']:#x}", row["derived_from"] or "")
        console.print(table)


def cmd_boot(args: argparse.Namespace) -> int:
    from kernel_model.host.boot import boot_image

    return boot_image(Path(args.image), dump_caps=args.dump_caps, confine=not args.no_confine,
                      timeout_s=args.timeout, est_ca=args.est_ca, trace=args.trace)


def cmd_est_ca(args: argparse.Namespace) -> int:
    from hil.est_ca.cli import main as est_main

    return est_main(args.est_args or ["--help"])


def cmd_hil(args: argparse.Namespace) -> int:
    from hil.qemu.cli import main as hil_main

    return hil_main(args.hil_args or ["--help"])


def cmd_check(args: argparse.Namespace) -> int:
    from kernel_model.host.check import check_image, explain

    console = Console(highlight=False)
    if args.why:
        return explain(Path(args.image), args.why[0], args.why[1], console)
    return check_image(Path(args.image), console)


def cmd_graph(args: argparse.Namespace) -> int:
    from kernel_model.host.check import graph_image

    return graph_image(Path(args.image), args.output, args.format, Console(highlight=False),
                       obtainable=args.obtainable)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l4emu",
        description="An emulated L4Re system: a microkernel model, Sigma0, Moe and every task of an image "
                    "as isolated processes that can only talk through capabilities.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    boot = sub.add_parser(
        "boot", help="boot a system image and run it until its tasks are done",
        description="Validate IMAGE, boot the kernel model, Sigma0 and Moe, and let Moe's loader start every task "
                    "of the image as its own confined process with exactly the declared capabilities. Each task's "
                    "log appears with its coloured tag; denied operations are printed as they happen. The run ends "
                    "when the image's run.until tasks have exited (exit status 0 if they all exited 0, else 1) or on "
                    "Ctrl-C/SIGTERM, which shuts every task process down. An invalid image exits with status 2 "
                    "before anything starts.")
    boot.add_argument("image", help="system image (YAML), e.g. images/hello.yaml")
    boot.add_argument("--dump-caps", action="store_true",
                      help="print every task's capability table (selector, object, rights, label, derived-from) "
                           "once all tasks have started")
    boot.add_argument("--trace", action="store_true",
                      help="print every IPC as it happens: who called or sent to whom (protocol, kernel-set label, "
                           "words, typed items), every reply, kernel operation and IRQ delivery")
    boot.add_argument("--no-confine", action="store_true",
                      help="do not confine task processes by the OS (namespaces, uid, seccomp); for debugging")
    boot.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                      help="stop the system after this many seconds (exit status 124)")
    boot.add_argument("--est-ca", metavar="HOST:PORT", default=None,
                      help="first start the development EST CA on this loopback address (state in var/est-ca; "
                           "its trust anchor var/est-ca/ca.crt is what images/wvds.yaml boots with)")
    boot.set_defaults(func=cmd_boot)
    check = sub.add_parser(
        "check", help="before boot: who can reach whom, what each task could ever obtain, and fail-open patterns",
        description="Validate IMAGE and analyse its authority statically: direct reachability (calls, IRQs, shared "
                    "memory), the authority closure (every capability a task could obtain through map/grant along "
                    "declared edges, with a witness path), information flow, and lint findings (server rights handed "
                    "to clients, unused caps, write where read suffices...). Exit status 0 without error findings, "
                    "1 with, 2 for an invalid image.")
    check.add_argument("image")
    check.add_argument("--why", nargs=2, metavar=("A", "B"),
                       help="explain how task A can reach task B (or obtain a cap to object B), or say there is no path")
    check.set_defaults(func=cmd_check)
    graph = sub.add_parser(
        "graph", help="draw the capability graph (Graphviz DOT, or SVG/PNG/PDF when `dot` is installed)",
        description="Write IMAGE's capability graph: tasks, gates, IRQs, dataspaces, factories, with rights on the "
                    "edges and server edges in bold. The format comes from --format or the output file's suffix; "
                    "'-o -' prints DOT.")
    graph.add_argument("image")
    graph.add_argument("-o", "--output", required=True, help="output file (.dot, .svg, .png, .pdf) or - for stdout")
    graph.add_argument("--format", choices=["dot", "svg", "png", "pdf"], default=None)
    graph.add_argument("--obtainable", action="store_true",
                       help="also draw (dashed) the caps each task could obtain through map/grant")
    graph.set_defaults(func=cmd_graph)
    hil = sub.add_parser(
        "hil", help="boot the system inside an emulated aarch64 board (QEMU): build, run IMAGE, shell",
        description="Hardware in the loop: `l4emu hil build` (Debian arm64 kernel + initramfs with Python and the "
                    "project), `l4emu hil run IMAGE [BOOT_ARGS...]` (boots QEMU, runs `l4emu boot IMAGE` in the "
                    "guest, exits with its status; 3 = QEMU did not boot, 4 = harness error, 5 = the guest stopped "
                    "answering), `l4emu hil shell`. `l4emu hil run --help` lists its options; see docs/hil.md.",
        add_help=False)
    hil.add_argument("hil_args", nargs=argparse.REMAINDER)
    hil.set_defaults(func=cmd_hil)
    est = sub.add_parser(
        "est-ca", help="run the development EST certificate authority (the device's environment)",
        description="The development EST (RFC 7030) CA on loopback: `l4emu est-ca serve --port 8443`, "
                    "`l4emu est-ca ca-cert` (the trust anchor as PEM). `l4emu est-ca serve --help` lists its options.",
        add_help=False)
    est.add_argument("est_args", nargs=argparse.REMAINDER)
    est.set_defaults(func=cmd_est_ca)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["hil"]:  # its own parser: options such as --help must reach it unparsed
        return cmd_hil(argparse.Namespace(hil_args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True, highlight=False)
    try:
        return int(args.func(args))
    except ImageError as exc:
        for problem in exc.problems:
            err.print(f"[bold red]error[/]: {escape(str(problem))}", markup=True, highlight=False)
        return Exit.BAD_INPUT
    except BootError as exc:
        err.print(f"[bold red]error[/]: {escape(str(exc))}")
        return Exit.BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
