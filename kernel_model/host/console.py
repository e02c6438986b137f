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


ANSI_COLORS = {c: 30 + i for i, c in enumerate("nrgybmcw")}


def tagged_line(tag: str, color: str, text: str, *, notice: bool = False) -> str:
    """A log line as printed: the tag (padded to 8, in the log's colour) then ``| `` and the text.

    ``text`` comes from ``kernel_model.logs.printable`` (no control character left), so the
    only escape sequences on the line are the colour of the tag, added here. Lines the
    kernel says about a log (dropped lines) use ``!`` instead of ``|``.
    """
    code = ANSI_COLORS.get(color.lower(), 37)
    style = f"\x1b[01;{code}m" if color.isupper() else f"\x1b[{code}m"
    return f"{style}{tag[:8]:<8}\x1b[0m{'!' if notice else '|'} {text}"


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
