"""Where the system's output goes: the kernel log (Moe's tagged task lines) and violations.

``RichConsole`` prints for people (colours, rich markup escaped); ``RecordingConsole``
keeps plain lines for tests and summaries. Both see the same calls.
"""
from __future__ import annotations

import re
import sys
from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from kernel_model.events import Violation

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class ConsoleSink(Protocol):
    def log_line(self, line: str) -> None: ...
    def kernel(self, message: str) -> None: ...
    def violation(self, v: Violation) -> None: ...
    def trace(self, text: str) -> None: ...


class RecordingConsole:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.violations: list[Violation] = []

    def log_line(self, line: str) -> None:
        self.lines.append(strip_ansi(line))

    def kernel(self, message: str) -> None:
        self.lines.append(f"kernel  | {message}")

    def violation(self, v: Violation) -> None:
        self.violations.append(v)
        self.lines.append(f"kernel  | {v}")

    def trace(self, text: str) -> None:
        self.lines.append(f"ipc     | {text}")

    def text(self) -> str:
        return "\n".join(self.lines)


class RichConsole(RecordingConsole):
    """Prints as it goes, and records too (the CLI's summary reads the record)."""

    def __init__(self, console: Console | None = None, *, quiet_violations: bool = False):
        super().__init__()
        self.out = console or Console(file=sys.stdout, highlight=False, soft_wrap=True)
        self.quiet_violations = quiet_violations

    def log_line(self, line: str) -> None:
        super().log_line(line)
        self.out.print(Text.from_ansi(line))

    def kernel(self, message: str) -> None:
        super().kernel(message)
        self.out.print(f"[bold]kernel[/]  | {escape(message)}")

    def violation(self, v: Violation) -> None:
        super().violation(v)
        if not self.quiet_violations:
            self.out.print(f"[bold red]kernel[/]  | [red]{escape(str(v))}[/]")

    def trace(self, text: str) -> None:
        super().trace(text)
        self.out.print(f"[dim]ipc     | {escape(text)}[/]")
