"""Task log text, made safe to print, and each log's rate budget. Pure (time is passed in, in µs).

A task's log capability is a kernel log object carrying the task's tag and colour
(Moe creates one per incarnation with the image's ``log`` declaration). The kernel
cuts what a task writes into lines, escapes every character a terminal would act on
(``\\r``, ESC and every other C0/C1 control, DEL, Unicode format and separator
characters such as bidi overrides) and hands each line to the host with the tag as a
separate field: a task's text can never look like another task's line or a kernel
line. A log whose task writes more lines or bytes per second than its budget drops
the excess and, once the second is over, says how many lines it dropped.
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata

WINDOW_US = 1_000_000
MAX_LINE = 4096  #: a line without an end is cut here, never hoarded
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_NAMED = {"\r": "\\r", "\t": "\\t", "\x1b": "\\e", "\\": "\\\\"}


def printable(text: str) -> str:
    """``text`` with everything a terminal would interpret shown escaped (``\\r``, ``\\e``, ``\\x9b``, ``\\u202e``)."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


_ESCAPE = re.compile(r"\\(?:([rte\\])|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")
_UNNAMED = {"r": "\r", "t": "\t", "e": "\x1b", "\\": "\\"}


def original(line: str) -> str:
    """What the task wrote, from a line ``printable`` made (for tools that parse task output)."""
    if "\\" not in line:
        return line
    return _ESCAPE.sub(lambda m: _UNNAMED[m[1]] if m[1] else chr(int(m[2] or m[3] or m[4], 16)), line)


@dataclasses.dataclass
class LogBudget:
    lines_per_s: int = 0  #: 0 = unlimited (the kernel console of the root tasks)
    bytes_per_s: int = 0


@dataclasses.dataclass
class LogStream:
    """One writer's line buffer and rate window."""

    budget: LogBudget
    partial: bytes = b""
    window: int | None = None  #: start of the current one-second window (µs)
    lines: int = 0
    written: int = 0  #: bytes written in the current window
    dropped: int = 0

    def write(self, data: bytes, now: int) -> tuple[list[str], str | None, bool]:
        """Returns (lines to print, a "dropped" notice for the window that ended, first drop of this window)."""
        notice = self.roll(now)
        text = self.partial + data
        parts = text.split(b"\n")
        self.partial = parts.pop()
        if len(self.partial) > MAX_LINE:
            parts.append(self.partial)
            self.partial = b""
        out: list[str] = []
        first_drop = False
        for raw in parts:
            if self.over(len(raw) + 1):
                self.dropped += 1
                first_drop = first_drop or self.dropped == 1
                continue
            self.lines += 1
            self.written += len(raw) + 1
            out.append(printable(raw.decode("utf-8", "replace")))
        return out, notice, first_drop

    def over(self, size: int) -> bool:
        b = self.budget
        return bool((b.lines_per_s and self.lines + 1 > b.lines_per_s) or
                    (b.bytes_per_s and self.written + size > b.bytes_per_s))

    def roll(self, now: int) -> str | None:
        """Start a new window if the current one is over; the notice for lines it dropped."""
        if self.window is not None and now < self.window + WINDOW_US:
            return None
        notice = None
        if self.dropped:
            notice = (f"[{self.dropped} line(s) dropped: more than {self.budget.lines_per_s} lines or "
                      f"{self.budget.bytes_per_s} bytes in one second]")
        self.window, self.lines, self.written, self.dropped = now, 0, 0, 0
        return notice

    def window_end(self) -> int | None:
        return self.window + WINDOW_US if self.dropped and self.window is not None else None
