"""``l4emu est-ca``: run the development EST CA from the command line.

    l4emu est-ca serve [--state-dir var/est-ca] [--host 127.0.0.1] [--port 0] ...
    l4emu est-ca ca-cert [--state-dir var/est-ca]      # print the trust anchor (PEM)
    l4emu est-ca rotate [--state-dir var/est-ca]       # issue from a new intermediate from now on

`main(argv)` is the whole CLI: it parses, calls the library (`EstCa`, `serve`) and turns
library errors into a one-line message and an exit status (0 ok, 1 error, 2 usage). It never
calls ``sys.exit``. ``serve`` prints its URL (with the chosen port when ``--port 0``) on the
first line of stdout and runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from protocols.exit_codes import ExitCode

from .authority import CURVES, EstCa, EstCaError
from .server import Fault, ServerOptions
from .serving import serve

__all__ = ["build_parser", "main"]

DEFAULT_STATE_DIR = Path("var/est-ca")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l4emu est-ca",
                                     description="Development EST (RFC 7030) CA on loopback.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="run the EST server until interrupted")
    run.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                     help="CA key and certificate live here (created on first start; "
                          "default: %(default)s)")
    run.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    run.add_argument("--port", type=int, default=0, help="TCP port, 0 = any free port")
    run.add_argument("--allow-non-loopback", action="store_true",
                     help="allow binding an address that is not loopback")
    auth = run.add_mutually_exclusive_group()
    auth.add_argument("--no-auth", action="store_true",
                      help="first enrollment needs no HTTP Basic credentials")
    auth.add_argument("--user", default="estuser", help="HTTP Basic user (default: %(default)s)")
    run.add_argument("--password", default="estpwd", help="HTTP Basic password "
                     "(default: %(default)s)")
    run.add_argument("--defer", type=int, default=0, metavar="N",
                     help="answer 202 + Retry-After N times per key before issuing")
    run.add_argument("--retry-after", type=int, default=1, metavar="SECONDS",
                     help="Retry-After value for deferred answers (default: %(default)s)")
    run.add_argument("--retry-after-date", action="store_true",
                     help="send Retry-After as an HTTP-date instead of seconds")
    run.add_argument("--validity-days", type=float, default=30.0,
                     help="validity of issued certificates (default: %(default)s)")
    run.add_argument("--curve", choices=sorted(CURVES), default="P-256",
                     help="curve of a newly created CA key (default: %(default)s)")
    run.add_argument("--label", action="append", default=None, metavar="LABEL",
                     help="accept only these CA labels (repeatable; default: any label)")
    run.add_argument("--fault", choices=[f.name.lower() for f in Fault], default="none",
                     help="misbehave on purpose, to test clients")
    run.add_argument("-q", "--quiet", action="store_true", help="no per-request log lines")

    show = commands.add_parser("ca-cert", help="print the CA certificate (trust anchor) as PEM "
                               "(creates the CA if the state directory is empty)")
    show.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)

    rotate = commands.add_parser("rotate", help="start a new issuing CA (intermediate): certificates are issued "
                                 "from it from the next start of `serve` on; older ones stay valid")
    rotate.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    return parser


def _serve(args: argparse.Namespace) -> int:
    if args.defer < 0 or args.retry_after < 0 or args.validity_days <= 0:
        raise EstCaError("--defer and --retry-after must be >= 0, --validity-days > 0")
    ca = EstCa(args.state_dir, curve=args.curve, validity=dt.timedelta(days=args.validity_days))
    options = ServerOptions(
        basic_auth=None if args.no_auth else (args.user, args.password),
        defer=args.defer,
        retry_after=args.retry_after,
        retry_after_http_date=args.retry_after_date,
        labels=frozenset(args.label) if args.label else None,
        fault=Fault[args.fault.upper()],
    )
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        with serve(ca, args.host, args.port, options,
                   allow_non_loopback=args.allow_non_loopback) as running:
            print(f"EST CA listening on {running.url}/", flush=True)
            print(f"trust anchor: {ca.ca_cert_path}"
                  f" ({'created' if ca.created else 'reloaded'})", flush=True)
            if options.basic_auth is not None:
                print(f"HTTP Basic for /simpleenroll: {options.basic_auth[0]} / "
                      f"{options.basic_auth[1]}", flush=True)
            print(f"issuing CA: {ca.issuing.subject.rfc4514_string()}", flush=True)
            stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``l4emu est-ca`` with ``argv`` (without the program name); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors (and --help) this way
        return int(exc.code or 0)
    log = logging.getLogger("l4emu.est_ca")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s est-ca %(message)s"))
    quiet = getattr(args, "quiet", False)
    if not quiet:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        if args.command == "ca-cert":
            sys.stdout.write(EstCa(args.state_dir).certificate_pem.decode("ascii"))
            return 0
        if args.command == "rotate":
            issuing = EstCa(args.state_dir).rotate_issuing()
            print(f"now issuing from {issuing.subject.rfc4514_string()} "
                  f"(serial {issuing.serial_number:x}, until {issuing.not_valid_after_utc:%Y-%m-%d})")
            return 0
        return _serve(args)
    except EstCaError as exc:
        print(f"[EstCaError]: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Exception:
        import traceback

        traceback.print_exc()
        print("error: unexpected failure in l4emu est-ca (a bug; the traceback is above)", file=sys.stderr)
        return ExitCode.BUG
    finally:
        log.removeHandler(handler)
