"""Boot a built image under qemu-system-aarch64 (TCG) and drive its serial console with pexpect.

    with Machine(Image.load()) as m:           # boots; raises BootFailed with the console tail
        out, status = m.run("l4emu boot images/hello.yaml", timeout=120)

The pattern is buildroot's ``support/testing/infra/emulator.py``: the QEMU argv is a list
(built by the pure ``qemu_argv``), ``pexpect.spawn`` with ``encoding="utf-8"`` and
``codec_errors="replace"``, one timeout multiplier for slow runners, ``logfile_read`` for
the transcript, ``expect([...])`` indices checked before anything is believed, ``run()``
returns ``(output, exit_code)``, ``stop()`` is safe to call twice. Failures are typed
(``errors.py``) and carry the last console lines.

Console facts this relies on (hil-guest.md section 5): the serial line is QEMU's stdio on
a pty, so output lines end in ``\\r\\n`` (G4); pexpect's 50 ms delay before each send is
switched off (G5); the guest shell's echo is turned off first, which also keeps busybox's
line editor out of the way (G7); markers are assembled by the guest's ``printf`` so the
typed command can never match them (G9); QEMU's exit status means nothing, the markers
decide (G11); a named CPU, never plain ``max`` (G12). The stdio chardev has
``signal=off`` and there is no monitor, so ^C reaches the guest and no byte kills QEMU (G14).
"""
from __future__ import annotations

import itertools
import re
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pexpect

from hil.qemu.build import Image
from hil.qemu.errors import BootFailed, GuestUnresponsive, HarnessError
from hil.qemu.initramfs import INIT_FAILED, READY

BOOT_TIMEOUT_S = 60.0  # typical 1-3 s; -cpu max takes ~10 s (G12); margin for a loaded CI host
COMMAND_TIMEOUT_S = 30.0
POWEROFF_TIMEOUT_S = 30.0
TAIL_LINES = 25

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class MachineConfig:
    """The virtual board. Defaults are hil-guest.md section 6's recommendation."""

    qemu: str = "qemu-system-aarch64"
    cpu: str = "cortex-a72"  # the Raspberry Pi 4 core; cortex-a76 / neoverse-n1 also boot in ~2 s
    memory_mib: int = 1024  # >= 512: with 256 MB the initramfs unpacks only partly (G6)
    smp: int = 1  # vCPUs; keep the host's total at or below its cores (G13)
    cmdline: tuple[str, ...] = ("console=ttyAMA0", "rdinit=/init", "quiet", "panic=-1")
    timeout_multiplier: float = 1.0  # scales every wait, for slow CI runners


def qemu_argv(kernel: Path, initrd: Path, config: MachineConfig = MachineConfig()) -> list[str]:
    """The QEMU command line, as a list. ``-no-reboot`` + ``panic=-1`` turn a guest panic into a QEMU exit."""
    if config.memory_mib < 512:
        raise HarnessError("machine-memory-too-small", f"{config.memory_mib} MiB is too little for the initramfs",
                           hint="use at least 512 MiB (1024 is the default); with less it unpacks only partly")
    if config.cpu == "max":
        raise HarnessError("machine-cpu-max", "-cpu max emulates pointer authentication with QARMA: 5x slower",
                           hint="use a named core (cortex-a72, cortex-a76, neoverse-n1) or max,pauth-impdef=on")
    return [
        config.qemu, "-M", "virt", "-cpu", config.cpu, "-smp", str(config.smp), "-m", str(config.memory_mib),
        "-nodefaults", "-nic", "none", "-no-reboot", "-display", "none", "-monitor", "none",
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", " ".join(config.cmdline),
    ]


# ------------------------------------------------------------- serial-log parsing (pure)
def normalise(text: str) -> str:
    """Console text as lines: CR runs before LF dropped (the pty's ONLCR, G4), VT100 sequences stripped."""
    return _ANSI.sub("", re.sub(r"\r+\n", "\n", text))


def command_line(cmd: str, token: int) -> str:
    """One shell line that frames ``cmd``'s output with markers only the guest's printf can produce."""
    return f"printf 'B%s-{token}\\n' EGIN; {cmd}; printf '\\nE%s-{token} rc=%s\\n' ND $?"


def end_pattern(token: int) -> str:
    return rf"END-{token} rc=(\d+)\r*\n"


def command_output(before: str, token: int) -> str:
    """The text ``cmd`` printed, from what pexpect read before the END marker.

    The frame is ``BEGIN-t\\n`` + output + ``\\nEND-t rc=N``; the ``\\n`` before END is the
    frame's own, so output is returned exactly as printed (line ends normalised).
    """
    text = normalise(before)
    start = text.rfind(f"BEGIN-{token}\n")
    if start < 0:
        raise HarnessError("console-frame-lost", f"the BEGIN-{token} marker is missing before END-{token}",
                           context=text.splitlines()[-TAIL_LINES:],
                           hint="the console lost bytes or the command was not run as one line")
    body = text[start + len(f"BEGIN-{token}\n"):]
    return body[:-1] if body.endswith("\n") else body


def tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    return [line for line in normalise(text).splitlines() if line.strip()][-lines:]


class _Transcript:
    """``logfile_read`` target: the raw console to a file and/or a live stream, and a tail kept in memory."""

    def __init__(self, path: Path | None, stream: TextIO | None):
        self.file = open(path, "w", encoding="utf-8", newline="") if path else None
        self.stream = stream
        self.recent: deque[str] = deque(maxlen=256)

    def write(self, data: str) -> None:
        self.recent.append(data)
        for out in (self.file, self.stream):
            if out is not None:
                out.write(data)

    def flush(self) -> None:
        for out in (self.file, self.stream):
            if out is not None:
                out.flush()

    def tail(self) -> list[str]:
        return tail("".join(self.recent))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Machine:
    """One QEMU guest: boots on ``start()`` (or ``with``), runs shell commands, powers off on ``stop()``.

    ``console`` receives the raw serial output as it arrives (e.g. ``sys.stdout``),
    ``log_path`` keeps the transcript. Errors: ``BootFailed`` (no ready marker),
    ``GuestUnresponsive`` (a command did not finish, QEMU died), ``HarnessError``.
    """

    def __init__(self, image: Image, config: MachineConfig = MachineConfig(), *,
                 log_path: Path | None = None, console: TextIO | None = None):
        self.image = image
        self.config = config
        self.argv = qemu_argv(image.kernel, image.initrd, config)
        self.log_path = log_path
        self.console = console
        self.boot_seconds: float | None = None
        self._child: pexpect.spawn | None = None
        self._transcript: _Transcript | None = None
        self._tokens = itertools.count(1)
        self._busy = False

    def _timeout(self, seconds: float) -> float:
        return seconds * self.config.timeout_multiplier

    def tail(self) -> list[str]:
        return self._transcript.tail() if self._transcript else []

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Machine":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> float:
        """Boot to the ready marker; returns the seconds it took. On failure QEMU is stopped."""
        if shutil.which(self.config.qemu) is None:
            raise HarnessError("qemu-not-found", f"{self.config.qemu} is not installed",
                               hint="run hil/qemu/setup.sh as root (installs qemu-system-arm)")
        self._transcript = _Transcript(self.log_path, self.console)
        started = time.monotonic()
        self._child = pexpect.spawn(self.argv[0], self.argv[1:], encoding="utf-8", codec_errors="replace",
                                    echo=False, timeout=self._timeout(BOOT_TIMEOUT_S))
        self._child.delaybeforesend = None
        # stop() ends QEMU itself (poweroff, else SIGHUP..SIGKILL 20 ms apart); close() need not wait again
        self._child.delayafterterminate = self._child.ptyproc.delayafterterminate = 0.02
        self._child.ptyproc.delayafterclose = 0.0
        self._child.logfile_read = self._transcript
        try:
            self._await_ready()
            self.boot_seconds = time.monotonic() - started
            self.run("stty -echo", timeout=COMMAND_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self.boot_seconds

    def _await_ready(self) -> None:
        child = self._child
        index = child.expect([rf"{READY} (\S+)\r*\n", r"Initramfs unpacking failed[^\r\n]*",
                              r"Kernel panic - not syncing[^\r\n]*", rf"{INIT_FAILED}[^\r\n]*",
                              pexpect.EOF, pexpect.TIMEOUT], timeout=self._timeout(BOOT_TIMEOUT_S))
        if index == 0:
            if child.match.group(1) != self.image.overlay_id:
                raise BootFailed("guest-overlay-mismatch",
                                 f"the guest booted overlay {child.match.group(1)}, expected {self.image.overlay_id}",
                                 context=self.tail(), hint="rebuild the image (l4emu hil build)")
            return
        reasons = {
            1: ("initramfs-unpack-failed", "the kernel could not unpack the whole initramfs",
                "give the guest more memory (MachineConfig.memory_mib >= 1024)"),
            2: ("guest-kernel-panic", "the guest kernel panicked during boot",
                "read the panic line above; a dead /init also panics"),
            3: ("guest-init-failed", "the guest's /init gave up", "rebuild the image (l4emu hil build)"),
            4: ("qemu-exited-early", "QEMU exited before the guest was ready",
                "QEMU's own error is the first context line; try the argv printed by `l4emu hil run --dry-run`"),
            5: ("qemu-boot-timeout", f"no {READY} marker within {self._timeout(BOOT_TIMEOUT_S):.0f} s",
                "a loaded host needs a larger timeout multiplier; a silent console means a wrong kernel/console"),
        }
        reference, message, hint = reasons[index]
        if index in (1, 2, 3):
            message = f"{message}: {normalise(child.after).strip()}"
        raise BootFailed(reference, message, context=self.tail(), hint=hint)

    def run(self, cmd: str, timeout: float = COMMAND_TIMEOUT_S) -> tuple[str, int]:
        """Run one shell command line in the guest; returns its output and its exit status.

        ``cmd`` is a single line (no newline, no trailing ``&`` or comment). On timeout the
        guest gets ^C; if it answers again the machine stays usable, either way
        ``GuestUnresponsive`` is raised.
        """
        child = self._child
        if child is None:
            raise HarnessError("machine-not-started", "Machine.run() before start() or after stop()")
        if "\n" in cmd or "\r" in cmd:
            raise HarnessError("command-not-one-line", "Machine.run() takes one shell line",
                               hint="join commands with ';' or '&&', or put a script into the image")
        token = next(self._tokens)
        self._busy = True
        child.sendline(command_line(cmd, token))
        index = child.expect([end_pattern(token), pexpect.EOF, pexpect.TIMEOUT], timeout=self._timeout(timeout))
        if index == 0:
            self._busy = False
            return command_output(child.before, token), int(child.match.group(1))
        if index == 1:
            raise GuestUnresponsive("qemu-died", f"QEMU exited while running {cmd!r}", context=self.tail(),
                                    hint="a guest panic or poweroff ends QEMU; see the console")
        recovered = self._interrupt(token)
        raise GuestUnresponsive("guest-command-timeout",
                                f"{cmd!r} did not finish within {self._timeout(timeout):.0f} s"
                                + ("" if recovered else "; the guest did not answer ^C either"),
                                context=self.tail(), hint="raise the timeout or the timeout multiplier")

    def _interrupt(self, token: int) -> bool:
        """^C the running command and resynchronise; True if the shell answers again.

        busybox ash finishes the interrupted line (its END marker then carries 130); a shell
        that drops the line instead is resynchronised with ``true``. The line discipline may
        discard a line that arrives right behind the ^C (ISIG flushes input), hence two tries.
        """
        child = self._child
        child.sendcontrol("c")
        wait = self._timeout(5)
        if child.expect([end_pattern(token), pexpect.EOF, pexpect.TIMEOUT], timeout=wait) == 0:
            self._busy = False
            return True
        for _ in range(2):
            if not child.isalive():
                return False
            sync = next(self._tokens)
            child.sendline(command_line("true", sync))
            if child.expect([end_pattern(sync), pexpect.EOF, pexpect.TIMEOUT], timeout=wait) == 0:
                self._busy = False
                return True
        return False

    def interact(self) -> None:
        """Hand the console to the user's terminal (Ctrl-] returns)."""
        self._child.logfile_read = None
        self._child.interact()
        self._child.logfile_read = self._transcript

    def stop(self) -> None:
        """Power the guest off (``poweroff -f`` when the shell is idle), then make sure QEMU is gone."""
        child, self._child = self._child, None
        if child is not None:
            try:
                if child.isalive() and not self._busy and self.boot_seconds is not None:
                    child.sendline("poweroff -f")
                    child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=self._timeout(POWEROFF_TIMEOUT_S))
            except (OSError, pexpect.ExceptionPexpect):
                pass  # the pty is already gone: QEMU exited
            finally:
                if child.isalive():
                    child.terminate(force=True)
                child.close()
        if self._transcript is not None:
            self._transcript.close()
