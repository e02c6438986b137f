"""``l4emu``: a thin command line over the library. One error boundary, named exit codes."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from capabilities.image import ImageError
from l4emu.boot import BootError
from protocols.exit_codes import ExitCode


def cmd_boot(args: argparse.Namespace) -> int:
    from hil.est_ca.binding import est_target_from_args
    from l4emu.boot import boot_image

    try:
        est_server = est_target_from_args(args)
    except ValueError as exc:
        raise BootError(str(exc)) from None
    live = False if args.headless else None
    from l4emu.boot import ChaosOptions
    chaos = None if args.chaos is None else ChaosOptions(
        args.chaos, tuple(t for t in (args.chaos_tasks or "").split(",") if t), args.chaos_interval)
    return boot_image(Path(args.image), dump_caps=args.dump_caps, confine=not args.no_confine,
                      timeout_s=args.timeout, est_ca=args.est_ca, trace=args.trace, est_server=est_server,
                      duration_s=args.duration, live=live,
                      json_summary=Path(args.json_summary) if args.json_summary else None,
                      run_dir=Path(args.run_dir) if args.run_dir else None, chaos=chaos)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def cmd_est_ca(args: argparse.Namespace) -> int:
    return est_ca_main(args.est_args)


def est_ca_main(argv: list[str]) -> int:
    """``l4emu est-ca ...``: the EST CA's own CLI; its state is the project's var/est-ca wherever it is run from
    (the directory ``make boot`` and images/wvds.yaml use), unless --state-dir says otherwise."""
    from hil.est_ca.cli import main as est_main
    from kernel_model.host.images import PROJECT_ROOT

    argv = list(argv) or ["--help"]
    if argv[0] in ("serve", "ca-cert") and not any(a == "--state-dir" or a.startswith("--state-dir=")
                                                    for a in argv[1:]):
        argv[1:1] = ["--state-dir", str(PROJECT_ROOT / "var" / "est-ca")]
    return est_main(argv)


def cmd_hil(args: argparse.Namespace) -> int:
    return hil_main(args.hil_args)


def hil_main(argv: list[str]) -> int:
    from hil.qemu.cli import main as qemu_main

    try:
        return qemu_main(list(argv) or ["--help"])
    except SystemExit as exc:  # its argparse exits on --help and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


#: Commands whose arguments belong to another CLI: passed on untouched (argparse would take their --help).
PASS_THROUGH = {"est-ca": est_ca_main, "hil": hil_main}


def cmd_check(args: argparse.Namespace) -> int:
    from l4emu.check import check_image, explain

    console = Console(highlight=False)
    if args.why:
        return explain(Path(args.image), args.why[0], args.why[1], console)
    return check_image(Path(args.image), console)


def cmd_graph(args: argparse.Namespace) -> int:
    from l4emu.check import graph_image

    return graph_image(Path(args.image), args.output, args.format, Console(highlight=False),
                       obtainable=args.obtainable)


def cmd_verify_outbox(args: argparse.Namespace) -> int:
    from l4emu.verify import DEFAULT_CA, verify_outbox

    return verify_outbox(Path(args.directory), Console(highlight=False), Path(args.ca) if args.ca else DEFAULT_CA,
                         Path(args.key) if args.key else None)


def cmd_new_task(args: argparse.Namespace) -> int:
    from l4emu.scaffold import ScaffoldError, scaffold

    console = Console(highlight=False)
    try:
        paths = scaffold(args.name)
    except ScaffoldError as exc:
        Console(stderr=True, highlight=False).print(f"[bold red]error[/]: {escape(str(exc))}")
        return ExitCode.BAD_INPUT
    for path in paths:
        console.print(f"wrote {escape(str(path))}")
    console.print(f"boot it: l4emu boot images/{args.name}.yaml; test it: "
                  f".venv/bin/python -m pytest tests/tasks/{args.name}")
    return 0


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
                    "before anything starts. On a terminal a live view shows every task (state, pid, generation, "
                    "restarts, IPCs made/served, denials, memory vs quota), the services and the latest log lines; "
                    "otherwise (or with --headless) plain lines. A per-task summary ends every run.")
    boot.add_argument("image", help="system image (YAML), e.g. images/hello.yaml")
    boot.add_argument("--dump-caps", action="store_true",
                      help="print every task's capability table (selector, object, rights, label, derived-from) "
                           "once all tasks have started")
    boot.add_argument("--trace", action="store_true",
                      help="print every IPC as it happens: who called or sent to whom (protocol, kernel-set label, "
                           "words, typed items), every reply, kernel operation and IRQ delivery")
    boot.add_argument("--no-confine", action="store_true",
                      help="do not confine task processes by the OS (namespaces, uid, seccomp); for debugging")
    boot.add_argument("--timeout", type=positive_seconds, default=None, metavar="SECONDS",
                      help="stop the system after this many seconds as a failure (exit status 124)")
    boot.add_argument("--duration", type=positive_seconds, default=None, metavar="SECONDS",
                      help="run for this many seconds, then stop as planned (exit status 0, or 1 if a run.until "
                           "task failed); without it a system whose tasks run forever runs until Ctrl-C")
    boot.add_argument("--headless", action="store_true",
                      help="no live view, even on a terminal: plain lines as they happen (as when output is piped)")
    boot.add_argument("--json-summary", metavar="FILE", default=None,
                      help="write the final summary (every task: pid, restarts, IPCs, denials, memory, exit "
                           "statuses; service metrics) as JSON to FILE, for CI")
    boot.add_argument("--run-dir", metavar="DIR", default=None,
                      help="the tasks' work directories (one per task; default var/run/IMAGE-NAME)")
    boot.add_argument("--chaos", type=int, metavar="SEED", default=None,
                      help="kill tasks (SIGKILL) at random points drawn from SEED, about every --chaos-interval "
                           "seconds; the same seed gives the same schedule (docs/supervision.md)")
    boot.add_argument("--chaos-tasks", metavar="A,B", default=None,
                      help="with --chaos: the tasks to kill (default every task of the image; sigma0 and moe "
                           "only when named here)")
    boot.add_argument("--chaos-interval", type=positive_seconds, metavar="SECONDS", default=5.0,
                      help="with --chaos: mean time between faults (default 5)")
    from hil.est_ca.binding import add_boot_options
    add_boot_options(boot)  # --est-ca [HOST:PORT], --est-server URL, --est-ta, --est-user, --est-password-file
    boot.set_defaults(func=cmd_boot)
    check = sub.add_parser(
        "check", help="before boot: who can reach whom, what each task could ever obtain, and fail-open patterns",
        description="Validate IMAGE and analyse its authority statically: direct reachability (calls, IRQs, shared "
                    "memory), the authority closure (every capability a task could obtain through map/grant along "
                    "declared edges, with a witness path), information flow, and lint findings (server rights handed "
                    "to clients, unused caps, write where read suffices...). Exit status 0 without error findings, "
                    "1 with, 2 for an invalid image.")
    check.add_argument("image")
    check.add_argument("--why", nargs=2, metavar=("A", "B"), help="explain how task A can reach task B "
                       "(or obtain a cap to object B), or say there is no path")
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
    new = sub.add_parser(
        "new-task", help="scaffold a task: tasks/NAME/task.py, images/NAME.yaml and a test, ready to boot",
        description="Write tasks/NAME/task.py (a server and a client of one protocol), images/NAME.yaml (the two "
                    "tasks with a gate between them) and tests/tasks/NAME/test_NAME.py (boots the image). Never "
                    "overwrites a file. NAME is a Python identifier of at most 16 characters.")
    new.add_argument("name", metavar="NAME")
    new.set_defaults(func=cmd_new_task)
    vo = sub.add_parser(
        "verify-outbox", help="verify the OEM gateway's sealed batches: signatures, chain to the EST CA, sequence",
        description="Check every batch-*.json in DIR (default: var/run/wvds/gateway/outbox, where `make boot` puts "
                    "them): the ML-DSA-65 signature, the device certificate chain to the EST CA (valid when the "
                    "batch was sealed, CN = the device id), the AES-GCM AAD binding device id and sequence number, "
                    "one signing key throughout, and sequence continuity (no gaps, repeats or edited records: each "
                    "record carries the previous one's hash). Exit status 0 if all verify, 1 if not, 2 if DIR or "
                    "the CA certificate cannot be read.")
    vo.add_argument("directory", nargs="?", default=str(Path(__file__).resolve().parents[1] / "var" / "run" /
                                                        "wvds" / "gateway" / "outbox"), metavar="DIR")
    vo.add_argument("--ca", metavar="FILE", default=None,
                    help="the EST CA certificate (PEM) the chain must lead to (default: var/est-ca/ca.crt)")
    vo.add_argument("--key", metavar="FILE", default=None,
                    help="the gateway's ML-DSA-65 public key (raw bytes) every record must be signed with")
    vo.set_defaults(func=cmd_verify_outbox)
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
    err = Console(stderr=True, highlight=False, soft_wrap=True)  # an error line is never broken in two
    parser = build_parser()
    try:
        if argv and argv[0] in PASS_THROUGH:
            return int(PASS_THROUGH[argv[0]](argv[1:]))
        args = parser.parse_args(argv)
        return int(args.func(args))
    except ImageError as exc:
        for problem in exc.problems:
            err.print(f"[bold red]error[/]: {escape(str(problem))}", markup=True, highlight=False)
        return ExitCode.BAD_INPUT
    except BootError as exc:
        err.print(f"[bold red]error[/]: {escape(str(exc))}")
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): every task was already shut down on the way out. Say so on
        # stderr, and keep Python from complaining about the closed stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        err.print("l4emu: output closed (broken pipe): the system was stopped")
        return ExitCode.BROKEN_PIPE
    except Exception:
        import traceback

        traceback.print_exc()
        err.print("[bold red]error[/]: unexpected failure in l4emu (a bug; the traceback is above)")
        return ExitCode.BUG


if __name__ == "__main__":
    sys.exit(main())
