"""Typed HIL errors: what went wrong, whose fault it is, what the console said, what to do.

Every error names a kebab-case ``reference`` (stable, searchable, used by tests), a
one-line ``message``, optional ``context`` (the last serial-console or subprocess lines,
rendered between "[N lines of output]" and "[end of output]"), and a ``hint``.

Whose fault decides the class, and the class decides the exit status of ``l4emu hil``:

- ``BootFailed`` (3): QEMU did not bring the guest to its ready marker (QEMU exited,
  kernel panic, initramfs unpacked only partly, boot timeout).
- ``HarnessError`` (4): the host side is wrong: tools missing, image not built, build
  failed, a bug in this package.
- ``GuestUnresponsive`` (5): the guest booted, then a command did not finish in time or
  QEMU died under it. (A guest command that *finishes* with a non-zero status is not an
  error here: the caller gets the status.)
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from protocols.exit_codes import ExitCode

_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class HilError(Exception):
    exit_code: int = ExitCode.HARNESS  # an ExitCode, or a front end's own IntEnum of the same values

    def __init__(self, reference: str, message: str, *, context: Iterable[str] = (), hint: str | None = None):
        if not _KEBAB.match(reference):
            raise ValueError(f"HilError reference must be kebab-case, got {reference!r}")
        self.reference = reference
        self.message = message
        self.context = list(context)
        self.hint = hint
        super().__init__(message)

    def render(self) -> str:
        lines = [f"error: {self.message} [{self.reference}]"]
        if self.context:
            lines.append(f"  [{len(self.context)} lines of output]")
            lines.extend(f"  {line}" for line in self.context)
            lines.append("  [end of output]")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class HarnessError(HilError):
    """The host side failed: missing tools, no image, a failed build, a bug here."""

    exit_code = ExitCode.HARNESS


class BootFailed(HilError):
    """QEMU did not boot the guest to its ready marker."""

    exit_code = ExitCode.QEMU_DID_NOT_BOOT


class GuestUnresponsive(HilError):
    """The guest booted, then stopped answering (a command timed out, or QEMU died)."""

    exit_code = ExitCode.GUEST_UNRESPONSIVE
