"""Boot a built image under qemu-system-aarch64 (TCG), or attach to a real board's serial line,
and drive the console with one expect logic.

    with Machine(Image.load()) as m:           # boots; raises BootFailed with the console tail
        out, status = m.run("l4emu boot images/hello.yaml", timeout=120)

    with Machine.serial("/dev/ttyUSB0") as m:  # a real aarch64 board booting the same image
        out, status = m.run("l4emu boot images/hello.yaml")

The console driver follows buildroot's ``support/testing/infra/emulator.py`` and labgrid's
ConsoleExpectMixin: pexpect with ``encoding="utf-8"`` and ``codec_errors="replace"``, no delay
before sends (pexpect's default ``delaybeforesend`` is 50 ms per line), every ``expect`` index
checked before anything is believed, ``run()`` returns ``(output, exit_code)``, ``stop()`` is
safe to call twice. Failures are typed (``errors.py``) and carry the last console lines.

Transports (``Transport``): QEMU's serial port on a unix-socket chardev (QEMU manual,
``-chardev socket``): the host listens, QEMU connects before the guest runs, so no byte is lost,
QEMU's own stderr goes to its own file, and every byte (^C included) reaches the guest's UART
unchanged; or a serial device (a USB-serial adapter, a pty) in raw mode.

Console facts this relies on: the guest shell's echo is turned off first (``stty -echo``), which
also keeps busybox's line editor out of the way; markers are assembled by the guest's
``printf``, so the typed command can never match them; QEMU's exit status does not say whether
the guest succeeded (PSCI power-off, a panic with ``panic=-1 -no-reboot`` and a kill all end it),
the markers do; a named CPU, never plain ``max`` (QEMU's ``max`` CPU emulates pointer
authentication with the QARMA cipher, several times slower under TCG).
"""
from __future__ import annotations

import ctypes
import errno
import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pexpect
import pexpect.fdpexpect

from hil.qemu.build import Image
from hil.qemu.errors import BootFailed, GuestUnresponsive, HarnessError
from hil.qemu.initramfs import INIT_FAILED, READY
from hil.qemu.timeouts import Timeouts

TAIL_LINES = 25
RELAY_SCRIPT = Path(__file__).with_name("relay.py")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class MachineConfig:
    """The virtual board."""

    qemu: str = "qemu-system-aarch64"
    cpu: str = "cortex-a72"  # the Raspberry Pi 4 core; cortex-a76 / neoverse-n1 boot as fast
    memory_mib: int = 1024  # >= 512: with 256 MiB the 108 MiB initramfs unpacks only partly
    smp: int = 1  # vCPUs; keep the host's total at or below its cores (MTTCG: one thread per vCPU)
    cmdline: tuple[str, ...] = ("console=ttyAMA0", "rdinit=/init", "quiet", "panic=-1")
    timeouts: Timeouts = field(default_factory=Timeouts.from_env)
    est_ca: str | None = None  # HOST:PORT of the EST CA on the host the guest may reach, or no NIC
    est_ca_guest_port: int | None = None  # the port the guest's tasks use (default: the host's)

    @property
    def guest_port(self) -> int | None:
        if self.est_ca is None:
            return None
        from hil.qemu.relay import parse_address

        return self.est_ca_guest_port or parse_address(self.est_ca)[1]

    @property
    def timeout_multiplier(self) -> float:
        return self.timeouts.multiplier


def network_args(est_ca: str | None, guest_port: int | None = None, python: str = sys.executable) -> list[str]:
    """QEMU's network: none, or a user-mode NIC that reaches exactly one host port (the EST CA).

    ``restrict=on`` isolates the guest (no route to the host or beyond); the single ``guestfwd``
    rule hands each guest connection to 10.0.2.100:PORT to ``relay.py stdio HOST:PORT``.
    ``virtio-net-device`` is the virtio-mmio NIC of ``-M virt``: it needs no option ROM.
    """
    if est_ca is None:
        return ["-nic", "none"]
    from hil.qemu.relay import GUESTFWD_ADDRESS, parse_address

    host, port = parse_address(est_ca)
    guest_port = guest_port or port
    command = f"{python} -I {RELAY_SCRIPT} stdio {host}:{port}"
    if "," in command:
        raise HarnessError("relay-path-has-comma", f"QEMU cannot take a ',' in the guestfwd command: {command}")
    return ["-netdev", f"user,id=net0,restrict=on,guestfwd=tcp:{GUESTFWD_ADDRESS}:{guest_port}-cmd:{command}",
            "-device", "virtio-net-device,netdev=net0"]


def qemu_argv(kernel: Path, initrd: Path, config: MachineConfig = MachineConfig(),
              console_socket: Path | None = None) -> list[str]:
    """The QEMU command line, as a list. ``-no-reboot`` + ``panic=-1`` turn a guest panic into a QEMU exit.

    ``console_socket``: the serial port connects to this unix socket (the host listens there);
    without one (a command line for a person) the serial port is this terminal.
    """
    if config.memory_mib < 512:
        raise HarnessError("machine-memory-too-small", f"{config.memory_mib} MiB is too little for the initramfs",
                           hint="use at least 512 MiB (1024 is the default); with less it unpacks only partly")
    if config.cpu == "max":
        raise HarnessError("machine-cpu-max", "-cpu max emulates pointer authentication with QARMA: 5x slower",
                           hint="use a named core (cortex-a72, cortex-a76, neoverse-n1) or max,pauth-impdef=on")
    chardev = f"socket,id=console,path={console_socket}" if console_socket else "stdio,id=console,signal=off"
    cmdline = list(config.cmdline)
    if config.est_ca is not None:
        cmdline.append(f"l4emu_est_ca_port={config.guest_port}")  # /init's environment
    return [
        config.qemu, "-M", "virt", "-cpu", config.cpu, "-smp", str(config.smp), "-m", str(config.memory_mib),
        "-nodefaults", *network_args(config.est_ca, config.guest_port), "-no-reboot", "-display", "none",
        "-monitor", "none",
        "-chardev", chardev, "-serial", "chardev:console",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", " ".join(cmdline),
    ]


# ------------------------------------------------------------- serial-log parsing (pure)
def normalise(text: str) -> str:
    """Console text as lines: CR runs before LF dropped, VT100 sequences stripped."""
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


def exit_description(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by signal {-returncode} ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _Transcript:
    """``logfile_read`` target: the raw console to a file and/or a live stream, and a tail kept in memory."""

    def __init__(self, path: Path | None, stream: TextIO | None):
        self.file = open(path, "a", encoding="utf-8", newline="") if path else None  # noqa: SIM115 (closed by close())
        self.stream = stream
        self.recent: deque[str] = deque(maxlen=256)
        self.received = 0  # characters so far: progress, for the inactivity timeout

    def write(self, data: str) -> None:
        self.recent.append(data)
        self.received += len(data)
        for out in (self.file, self.stream):
            if out is not None:
                out.write(data)
                out.flush()  # a transcript cut off by a kill still holds everything seen

    def flush(self) -> None:
        pass

    def tail(self) -> list[str]:
        return tail("".join(self.recent))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


# ------------------------------------------------------------------------- transports
class Transport:
    """Where the console bytes come from: ``open()`` returns a readable/writable fd."""

    description = "console"
    expected_overlay: str | None = None
    argv: list[str]  # how it is started, for the run record

    def open(self, deadline: float, clock: Callable[[], float]) -> int:
        raise NotImplementedError

    def died(self) -> str | None:
        """Why the other side is gone (None while it is there, or when unknown)."""
        return None

    def stderr_tail(self) -> list[str]:
        return []

    def close(self, poweroff_wait: Callable[[], None] | None = None) -> None:
        raise NotImplementedError


def _die_with_parent() -> None:
    """In QEMU's child process: SIGKILL when the harness dies, even by SIGKILL (prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


class QemuTransport(Transport):
    """qemu-system-aarch64 with its serial port on a unix socket the harness listens on."""

    def __init__(self, image: Image, config: MachineConfig, *, stderr_path: Path | None = None):
        self.image = image
        self.config = config
        self.dir = Path(tempfile.mkdtemp(prefix="l4emu-hil-"))
        self.socket_path = self.dir / "console.sock"
        self.argv = qemu_argv(image.kernel, image.initrd, config, self.socket_path)
        self.stderr_path = stderr_path or self.dir / "qemu-stderr.log"
        self.expected_overlay = image.overlay_id
        self.description = f"QEMU ({config.qemu})"
        self.proc: subprocess.Popen | None = None
        self._conn: socket.socket | None = None

    def open(self, deadline: float, clock: Callable[[], float]) -> int:
        if shutil.which(self.config.qemu) is None:
            raise HarnessError("qemu-not-found", f"{self.config.qemu} is not installed",
                               hint="run hil/qemu/setup.sh as root (installs qemu-system-arm)")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen(1)
        listener.settimeout(0.2)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        try:
            while True:
                try:
                    self._conn, _ = listener.accept()
                    break
                except TimeoutError:
                    if self.proc.poll() is not None:
                        raise BootFailed("qemu-exited-early",
                                         f"QEMU {exit_description(self.proc.returncode)} before it opened the console",
                                         context=self.stderr_tail(),
                                         hint="QEMU's own error is in the context; the command line is "
                                              "`l4emu hil run --dry-run`'s") from None
                    if clock() > deadline:
                        raise BootFailed("qemu-console-timeout", "QEMU never connected its serial console",
                                         context=self.stderr_tail()) from None
        finally:
            listener.close()
        return self._conn.fileno()

    def died(self) -> str | None:
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout=2)  # the console closed: QEMU is exiting; give it a moment
        except subprocess.TimeoutExpired:
            return None
        return f"QEMU {exit_description(self.proc.returncode)}"

    def stderr_tail(self) -> list[str]:
        try:
            text = Path(self.stderr_path).read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-TAIL_LINES:]

    def close(self, poweroff_wait: Callable[[], None] | None = None) -> None:
        proc, self.proc = self.proc, None
        try:
            if proc is not None and poweroff_wait is not None and proc.poll() is None:
                poweroff_wait()
            if proc is not None and proc.poll() is None:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(timeout=2)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            if proc is not None:
                proc.wait()
                self.returncode = proc.returncode
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            shutil.rmtree(self.dir, ignore_errors=True)


class SerialTransport(Transport):
    """A serial device (``/dev/ttyUSB0``, ``/dev/ttyAMA0``, a pty) in raw mode at ``baud``."""

    def __init__(self, device: str, baud: int = 115200, expected_overlay: str | None = None):
        self.device = device
        self.baud = baud
        self.expected_overlay = expected_overlay
        self.description = f"serial {device}"
        self.argv = ["serial", device, str(baud)]
        self.fd: int | None = None

    def open(self, deadline: float, clock: Callable[[], float]) -> int:
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY)
        except OSError as exc:
            raise HarnessError("serial-open-failed", f"cannot open {self.device}: {exc.strerror}",
                               hint="is the board connected, and may this user open the device (dialout group)?"
                               ) from exc
        try:
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            speed = getattr(termios, f"B{self.baud}", None)
            if speed is None:
                raise HarnessError("serial-bad-baud", f"{self.baud} is not a baud rate termios knows")
            attrs[4] = attrs[5] = speed
            attrs[2] |= termios.CLOCAL | termios.CREAD
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except (termios.error, OSError) as exc:
            os.close(fd)
            raise HarnessError("serial-setup-failed", f"{self.device} is not a terminal device: {exc}") from None
        self.fd = fd
        return fd

    def close(self, poweroff_wait: Callable[[], None] | None = None) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


# ------------------------------------------------------------------------------ machine
class Machine:
    """One guest: boots on ``start()`` (or ``with``), runs shell commands, powers off on ``stop()``.

    ``console`` receives the raw serial output as it arrives (e.g. ``sys.stdout``),
    ``log_path`` keeps the transcript. Errors: ``BootFailed`` (no ready marker),
    ``GuestUnresponsive`` (a command did not finish, QEMU died), ``HarnessError``.
    ``clean`` is False once a command timed out or was cut off: a caller that wants a guest
    in a known state boots a fresh one.
    """

    def __init__(self, image: Image | None, config: MachineConfig = MachineConfig(), *,
                 log_path: Path | None = None, console: TextIO | None = None,
                 stderr_path: Path | None = None, transport: Transport | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.image = image
        self.config = config
        self.timeouts = config.timeouts
        if transport is None:
            if image is None:
                raise HarnessError("machine-without-image", "a QEMU machine needs an image")
            transport = QemuTransport(image, config, stderr_path=stderr_path)
        self.transport = transport
        self.argv = transport.argv
        self.log_path = log_path
        self.console = console
        self.clock = clock
        self.boot_seconds: float | None = None
        self.overlay_id: str | None = None
        self.clean = True
        self._child: pexpect.fdpexpect.fdspawn | None = None
        self._transcript: _Transcript | None = None
        self._tokens = itertools.count(1)
        self._busy = False
        self._session_deadline: float | None = None

    @classmethod
    def serial(cls, device: str, config: MachineConfig = MachineConfig(), *, baud: int = 115200,
               expected_overlay: str | None = None, **kwargs) -> Machine:
        return cls(None, config, transport=SerialTransport(device, baud, expected_overlay), **kwargs)

    def tail(self) -> list[str]:
        return self._transcript.tail() if self._transcript else []

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Machine:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _deadline(self, seconds: float) -> float:
        """An absolute deadline ``seconds`` from now, never past the session's hard cap."""
        deadline = self.clock() + seconds
        return deadline if self._session_deadline is None else min(deadline, self._session_deadline)

    def start(self) -> float:
        """Boot to the ready marker; returns the seconds it took. On failure everything is stopped."""
        started = self.clock()
        self._session_deadline = started + self.timeouts.session
        self._transcript = _Transcript(self.log_path, self.console)
        try:
            fd = self.transport.open(self._deadline(self.timeouts.boot), self.clock)
            self._child = pexpect.fdpexpect.fdspawn(fd, encoding="utf-8", codec_errors="replace",
                                                    timeout=self.timeouts.boot)
            self._child.delaybeforesend = None
            self._child.logfile_read = self._transcript
            self._await_ready(self._deadline(self.timeouts.boot))
            self.boot_seconds = self.clock() - started
            self.run("stty -echo", timeout=self.timeouts.interrupt_s * 3)
        except BaseException:
            self.clean = False
            self.stop()
            raise
        return self.boot_seconds

    def _died_context(self) -> list[str]:
        lines = self.tail()
        err = self.transport.stderr_tail()
        if err:
            lines = lines + ["--- QEMU stderr ---", *err]
        return lines

    def _await_ready(self, deadline: float) -> None:
        patterns = [rf"{READY} (\S+)\r*\n", r"Initramfs unpacking failed[^\r\n]*",
                    r"Kernel panic - not syncing[^\r\n]*", rf"{INIT_FAILED}[^\r\n]*"]
        index = self._expect(patterns, deadline, inactivity=False)
        child = self._child
        assert child is not None and self._transcript is not None, "the machine is started"
        if index == 0:
            self.overlay_id = _matched(child, 1)
            expected = self.transport.expected_overlay
            if expected is not None and self.overlay_id != expected:
                raise BootFailed("guest-overlay-mismatch",
                                 f"the guest booted overlay {self.overlay_id}, expected {expected}",
                                 context=self.tail(), hint="rebuild the image (l4emu hil build)")
            return
        if index == len(patterns):  # EOF
            why = self.transport.died() or f"{self.transport.description} closed the console"
            raise BootFailed("qemu-exited-early", f"{why} before the guest was ready "
                                                  f"(after {self.clock() - (deadline - self.timeouts.boot):.1f} s)",
                             context=self._died_context() or ["(the console printed nothing)"],
                             hint="QEMU's own error is in its stderr (shown above when there is one); a kill "
                                  "from outside shows as a signal; the command line is `l4emu hil run --dry-run`'s")
        if index == len(patterns) + 1:
            raise BootFailed("qemu-boot-timeout", f"no {READY} marker within {self.timeouts.boot:.0f} s "
                                                  f"(timeout multiplier {self.timeouts.multiplier:g})",
                             context=self._died_context(),
                             hint="a loaded host needs a larger L4EMU_HIL_TIMEOUT_MULTIPLIER; a silent console "
                                  "means a wrong kernel or console")
        reasons = {
            1: ("initramfs-unpack-failed", "the kernel could not unpack the whole initramfs",
                "give the guest more memory (MachineConfig.memory_mib >= 1024)"),
            2: ("guest-kernel-panic", "the guest kernel panicked during boot",
                "read the panic line above; a dead /init also panics"),
            3: ("guest-init-failed", "the guest's /init gave up", "rebuild the image (l4emu hil build)"),
        }
        reference, message, hint = reasons[index]
        raise BootFailed(reference, f"{message}: {normalise(str(child.after)).strip()}", context=self.tail(), hint=hint)

    def _expect(self, patterns: list, deadline: float, *, inactivity: bool = True) -> int:
        """``expect(patterns + [EOF, TIMEOUT])`` until ``deadline``; TIMEOUT also when the console is silent
        for the inactivity budget. Returns the index (``len(patterns)``: EOF, ``+1``: timeout)."""
        child = self._child
        assert child is not None and self._transcript is not None, "the machine is started"
        full = [*patterns, pexpect.EOF, pexpect.TIMEOUT]
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                self.timed_out_by = "deadline"
                return len(patterns) + 1
            seen = self._transcript.received
            wait = min(remaining, self.timeouts.inactivity) if inactivity else remaining
            try:
                index = child.expect(full, timeout=wait)
            except OSError as exc:  # a serial device unplugged, a socket reset
                if exc.errno in (errno.EIO, errno.EBADF, errno.ECONNRESET):
                    return len(patterns)
                raise
            if index < len(patterns) + 1:
                return index
            if inactivity and self._transcript.received == seen and self.clock() < deadline:
                self.timed_out_by = "inactivity"
                return len(patterns) + 1

    def run(self, cmd: str, timeout: float | None = None) -> tuple[str, int]:
        """Run one shell command line in the guest; returns its output and its exit status.

        ``timeout`` is unscaled seconds (default: the model's command budget); the multiplier
        applies. ``cmd`` is a single line (no newline, no trailing ``&`` or comment). On timeout the
        guest gets ^C; the machine is then no longer ``clean`` and ``GuestUnresponsive`` is raised.
        """
        child = self._child
        if child is None:
            raise HarnessError("machine-not-started", "Machine.run() before start() or after stop()")
        if "\n" in cmd or "\r" in cmd:
            raise HarnessError("command-not-one-line", "Machine.run() takes one shell line",
                               hint="join commands with ';' or '&&', or put a script into the image")
        budget = self.timeouts.scaled(self.timeouts.command_s if timeout is None else timeout)
        token = next(self._tokens)
        self._busy = True
        child.sendline(command_line(cmd, token))
        index = self._expect([end_pattern(token)], self._deadline(budget))
        if index == 0:
            self._busy = False
            return command_output(str(child.before), token), int(_matched(child, 1))
        self.clean = False
        if index == 1:
            why = self.transport.died() or f"{self.transport.description} closed the console"
            raise GuestUnresponsive("qemu-died", f"{why} while running {cmd!r}", context=self._died_context(),
                                    hint="a guest panic or poweroff ends QEMU; see the console")
        silent = getattr(self, "timed_out_by", "") == "inactivity"
        recovered = self._interrupt(token)
        what = (f"printed nothing for {self.timeouts.inactivity:.0f} s" if silent
                else f"did not finish within {budget:.0f} s")
        raise GuestUnresponsive("guest-command-timeout" if not silent else "guest-console-silent",
                                f"{cmd!r} {what} (timeout multiplier {self.timeouts.multiplier:g})"
                                + ("" if recovered else "; the guest did not answer ^C either"),
                                context=self.tail(), hint="raise L4EMU_HIL_TIMEOUT_MULTIPLIER or the timeout")

    def _interrupt(self, token: int) -> bool:
        """^C the running command and resynchronise; True if the shell answers again.

        busybox ash finishes the interrupted line (its END marker then carries 130); a shell
        that drops the line instead is resynchronised with ``true``. The line discipline may
        discard a line that arrives right behind the ^C (ISIG flushes input), hence three tries.
        """
        child = self._child
        assert child is not None and self._transcript is not None, "the machine is started"
        wait = self.timeouts.interrupt
        # On a loaded machine the ^C can arrive before the command has even started (the shell
        # takes it, then runs the command): each try interrupts again before resynchronising.
        for _ in range(3):
            if not child.isalive():
                return False
            try:
                child.send("\x03")
            except OSError:
                return False
            if self._expect([end_pattern(token)], self.clock() + wait, inactivity=False) == 0:
                self._busy = False
                return True
            sync = next(self._tokens)
            try:
                child.sendline(command_line("true", sync))
            except OSError:
                return False
            if self._expect([end_pattern(sync)], self.clock() + wait, inactivity=False) == 0:
                self._busy = False
                return True
        return False

    def interact(self, escape: bytes = b"\x1d") -> None:
        """Hand the console to the user's terminal (raw mode) until ``escape`` (Ctrl-]) is typed."""
        import select

        assert self._child is not None, "the machine is started"
        fd, stdin = self._child.child_fd, sys.stdin.fileno()
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
        try:
            while True:
                ready, _, _ = select.select([fd, stdin], [], [])
                if fd in ready:
                    data = os.read(fd, 4096)
                    if not data:
                        return
                    os.write(sys.stdout.fileno(), data)
                    if self._transcript is not None:
                        self._transcript.write(data.decode("utf-8", "replace"))
                if stdin in ready:
                    data = os.read(stdin, 1024)
                    if escape in data:
                        data = data[:data.index(escape)]
                        if data:
                            os.write(fd, data)
                        return
                    os.write(fd, data)
        finally:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            self._busy = True  # the user may have left anything running: no polite poweroff

    def stop(self) -> None:
        """Power the guest off (``poweroff -f`` when the shell is idle), then make sure QEMU is gone."""
        child, self._child = self._child, None

        def poweroff() -> None:
            if child is None or self._busy or self.boot_seconds is None:
                return
            try:
                child.sendline("poweroff -f")
                child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=self.timeouts.poweroff)
            except (OSError, pexpect.ExceptionPexpect):
                pass  # the console is already gone: QEMU exited

        try:
            if isinstance(self.transport, QemuTransport):
                self.transport.close(poweroff)
            else:
                self.transport.close()  # a board stays powered: the next run waits for its reset
        finally:
            if self._transcript is not None:
                self._transcript.close()
                self._transcript = None


def _matched(child: pexpect.fdpexpect.fdspawn, group: int) -> str:
    """Group ``group`` of the pattern ``child.expect`` just matched (a regex, never EOF/TIMEOUT)."""
    match = child.match
    assert isinstance(match, re.Match), match
    return str(match.group(group))


def shell_argv(argv: list[str]) -> str:
    """``argv`` as one copy-paste shell line."""
    return shlex.join(argv)
