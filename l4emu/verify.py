"""``l4emu verify-outbox DIR``: check the gateway's sealed batches (the I/O half of tasks.oem_gateway.outbox).

Exit status: 0 when every record verifies and the chain between them is whole, 1 otherwise,
2 when the directory or the CA certificate cannot be read.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from cryptography import x509
from rich.console import Console
from rich.markup import escape

from kernel_model.host import workdirs
from kernel_model.host.images import PROJECT_ROOT
from protocols.exit_codes import ExitCode
from tasks.oem_gateway import outbox

DEFAULT_CA = PROJECT_ROOT / "var" / "est-ca" / "ca.crt"
DEFAULT_OUTBOX = PROJECT_ROOT / "var" / "run" / "wvds" / "gateway" / "outbox"


def verify_outbox(directory: Path, console: Console, ca_path: Path = DEFAULT_CA, key_path: Path | None = None) -> int:
    with contextlib.ExitStack() as stack:
        return _verify(_readable(directory, stack), directory, console, ca_path, key_path)


def _readable(directory: Path, stack: contextlib.ExitStack) -> Path:
    """Where the outbox's files can be read. A task's work dir is a filesystem image of its budget
    (``<run>/<task>.ext4``, mounted only inside the task): read a copy of the image's files."""
    if directory.is_dir() and any(directory.glob("batch-*.json")):
        return directory
    for parent in [directory, *directory.parents]:
        if parent.name and workdirs.image_for(parent).is_file():
            copy = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="l4emu-outbox-")))
            workdirs.export_files(parent, copy)
            return copy / directory.relative_to(parent)
    return directory


def _verify(directory: Path, shown: Path, console: Console, ca_path: Path, key_path: Path | None) -> int:
    try:
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    except (OSError, ValueError) as exc:
        console.print(f"[bold red]error[/]: cannot read the EST CA certificate {escape(str(ca_path))}: "
                      f"{escape(str(exc))}")
        return ExitCode.BAD_INPUT
    expected = None
    if key_path is not None:
        try:
            expected = key_path.read_bytes()
        except OSError as exc:
            console.print(f"[bold red]error[/]: cannot read {escape(str(key_path))}: {escape(str(exc))}")
            return ExitCode.BAD_INPUT
    if not directory.is_dir():
        console.print(f"[bold red]error[/]: no outbox directory {escape(str(shown))}")
        return ExitCode.BAD_INPUT
    files = []
    for path in sorted(directory.glob("batch-*.json")):
        with open(path, "rb") as f:
            files.append((path.name, f.read(outbox.MAX_RECORD + 1)))
    report = outbox.verify(files, ca, expected_key=expected)
    for finding in report.findings:
        mark = "[green]ok[/]  " if finding.ok else "[bold red]FAIL[/]"
        console.print(f"{mark} {escape(finding.name)}: {escape(finding.message)}", soft_wrap=True)
    for note in report.notes:
        console.print(f"[cyan]note[/]: {escape(note)}", soft_wrap=True)
    bad = sum(not f.ok for f in report.findings)
    console.print(f"{len(report.findings)} records, {bad} failed; signatures, certificate chain to "
                  f"{escape(ca.subject.rfc4514_string())} and sequence continuity checked", soft_wrap=True)
    return ExitCode.OK if report.ok else ExitCode.FAILED
