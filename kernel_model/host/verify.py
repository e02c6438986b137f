"""``l4emu verify-outbox DIR``: check the gateway's sealed batches (the I/O half of tasks.oem_gateway.outbox).

Exit status: 0 when every record verifies and the chain between them is whole, 1 otherwise,
2 when the directory or the CA certificate cannot be read.
"""
from __future__ import annotations

from pathlib import Path

from cryptography import x509
from rich.console import Console
from rich.markup import escape

from kernel_model.host.images import PROJECT_ROOT
from tasks.oem_gateway import outbox

DEFAULT_CA = PROJECT_ROOT / "var" / "est-ca" / "ca.crt"
DEFAULT_OUTBOX = PROJECT_ROOT / "var" / "run" / "wvds" / "gateway" / "outbox"


def verify_outbox(directory: Path, console: Console, ca_path: Path = DEFAULT_CA, key_path: Path | None = None) -> int:
    try:
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    except (OSError, ValueError) as exc:
        console.print(f"[bold red]error[/]: cannot read the EST CA certificate {escape(str(ca_path))}: "
                      f"{escape(str(exc))}")
        return 2
    expected = None
    if key_path is not None:
        try:
            expected = key_path.read_bytes()
        except OSError as exc:
            console.print(f"[bold red]error[/]: cannot read {escape(str(key_path))}: {escape(str(exc))}")
            return 2
    if not directory.is_dir():
        console.print(f"[bold red]error[/]: no outbox directory {escape(str(directory))}")
        return 2
    files = []
    for path in sorted(directory.glob("batch-*.json")):
        with open(path, "rb") as f:
            files.append((path.name, f.read(outbox.MAX_RECORD + 1)))
    report = outbox.verify(files, ca, expected_key=expected)
    for f in report.findings:
        mark = "[green]ok[/]  " if f.ok else "[bold red]FAIL[/]"
        console.print(f"{mark} {escape(f.name)}: {escape(f.message)}", soft_wrap=True)
    for note in report.notes:
        console.print(f"[cyan]note[/]: {escape(note)}", soft_wrap=True)
    bad = sum(not f.ok for f in report.findings)
    console.print(f"{len(report.findings)} records, {bad} failed; signatures, certificate chain to "
                  f"{escape(ca.subject.rfc4514_string())} and sequence continuity checked", soft_wrap=True)
    return 0 if report.ok else 1
