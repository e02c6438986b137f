"""The key-storage devices around an emulated system: a software TPM and a PKCS#11 token per task.

A task that keeps keys in a TPM or an HSM (the crypto service,
docs/crypto_keystore.md) declares in its image config what the boot provides::

    config:
      devices:
        swtpm: {}                                           # a TPM 2.0 for this task
        softhsm2: {label: wvds, pin_module: crypto-hsm-pin} # a PKCS#11 token for this task

``swtpm``: Debian's swtpm (TPM 2.0 emulator, run as ``nobody`` when the boot is
root, with swtpm's own seccomp profile) serving a unix socket; its state
(the TPM's seeds and NV) lives in ``<run>/.keystore/<task>/swtpm``, outside
the task's work directory, so the task can use the TPM but never read its
secrets. A confined task may not create sockets (seccomp), so the boot gives
it the TPM the way a kernel gives a device node: two FIFOs in its work
directory, ``tpm/cmd`` and ``tpm/rsp``, relayed to the socket by a thread of
the boot process that only frames TPM commands by their size field (at most
4096 bytes; anything else drops the task's connection). The service's TCTI is
``fifo:tpm``. The same swtpm state is reused on the next boot: keys survive.

``softhsm2``: a SoftHSM2 token initialised with the image module's PIN in the
task's work directory (``softhsm/``; SoftHSM2 is a library inside the task
process, so its token files must be the task's). Config file:
``softhsm/softhsm2.conf`` (the service's ``storage.softhsm2_conf``).

``keystore_devices(loaded, run_dir, log)`` is a context manager: devices up
before the tasks start, down after the system stopped. Tests use ``Swtpm``,
``FifoRelay`` and ``init_softhsm_token`` directly.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

SWTPM = "swtpm"
SOFTHSM_UTIL = "softhsm2-util"
SWTPM_UID = 65534  # nobody: swtpm drops to it (its state directory is chowned to it)
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MAX_TPM_FRAME = 4096
# keystore_tpm.RELAY_UNREACHABLE and MAX_RESPONSE: not imported, so a boot does not load the crypto stack
RELAY_UNREACHABLE = b"\x00\x00\x00\x00\x00\x0a\x00\x00\x00\x00"


class DeviceError(RuntimeError):
    """A device could not be started (the tool is missing, a bad declaration)."""


def _reachable_by_others(directory: Path) -> bool:
    path = directory.resolve()
    return all(os.stat(p).st_mode & 0o001 for p in (path, *path.parents))


class Swtpm:
    """One swtpm process: TPM 2.0 on a unix socket, state in ``state_dir``."""

    def __init__(self, state_dir: Path, socket_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir)
        self._own_socket_dir = socket_dir is None
        # unix socket paths are limited to 108 bytes: keep the socket short
        self.socket_dir = Path(socket_dir) if socket_dir else Path(tempfile.mkdtemp(prefix="l4tpm-"))
        self.socket = self.socket_dir / "swtpm.sock"
        self.proc: subprocess.Popen | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:{self.socket}"

    def start(self, timeout_s: float = 60.0) -> None:
        if shutil.which(SWTPM) is None:
            raise DeviceError("swtpm is not installed (./bootstrap.sh installs it)")
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        runas: list[str] = []
        if os.geteuid() == 0 and _reachable_by_others(self.state_dir.parent):  # libtpms parses what the
            # task sends: not as root (a state directory below a private one, e.g. a test's tmp, stays root's)
            for path in (self.socket_dir, self.state_dir, *self.state_dir.iterdir()):
                os.chown(path, SWTPM_UID, SWTPM_UID)
            runas = ["--runas", str(SWTPM_UID)]
        self.proc = subprocess.Popen(
            [SWTPM, "socket", "--tpm2", "--server", f"type=unixio,path={self.socket}",
             "--tpmstate", f"dir={self.state_dir}", "--flags", "not-need-init,startup-clear", *runas],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s  # a guard against a hang, not a speed expectation
        while True:
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None  # stderr=PIPE
                raise DeviceError(f"swtpm exited: {self.proc.stderr.read().decode(errors='replace').strip()}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                if self.socket.exists() and probe.connect_ex(str(self.socket)) == 0:
                    return  # swtpm serves one connection at a time: the probe's closes at once
            if time.monotonic() > deadline:
                self.stop()
                raise DeviceError(f"swtpm did not open {self.socket}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


class FifoRelay:
    """``dir/cmd`` -> TPM socket -> ``dir/rsp``, one command at a time, for a task that may not use sockets."""

    def __init__(self, fifo_dir: Path, socket_path: Path, log: Callable[[str], None] = lambda s: None) -> None:
        self.dir, self.socket_path, self.log = Path(fifo_dir), Path(socket_path), log
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("cmd", "rsp"):
            path = self.dir / name
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.mkfifo(path, 0o600)
        self._stop = False
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name=f"tpm-relay {self.dir}", daemon=True)

    def start(self) -> FifoRelay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        for name, flags in (("cmd", os.O_WRONLY), ("rsp", os.O_RDONLY)):  # unblock a pending open()
            with contextlib.suppress(OSError):
                os.close(os.open(self.dir / name, flags | os.O_NONBLOCK))
        self._thread.join(5)
        if self._sock is not None:
            self._sock.close()

    def _run(self) -> None:
        while not self._stop:
            try:
                cmd = os.open(self.dir / "cmd", os.O_RDONLY)
            except OSError:
                return
            try:
                rsp = os.open(self.dir / "rsp", os.O_WRONLY)
            except OSError:
                os.close(cmd)
                return
            try:
                while not self._stop and self._one(cmd, rsp):
                    pass
            except Exception as exc:
                self.log(f"tpm relay: {type(exc).__name__}: {exc}")
            finally:
                os.close(cmd)
                os.close(rsp)

    @staticmethod
    def _read(fd: int, n: int) -> bytes | None:
        out = b""
        while len(out) < n:
            chunk = os.read(fd, n - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    def _one(self, cmd: int, rsp: int) -> bool:
        head = self._read(cmd, 10)
        if head is None:
            return False  # the task closed (or died): wait for the next one
        size = struct.unpack(">I", head[2:6])[0]
        if not 10 <= size <= MAX_TPM_FRAME:
            self.log(f"tpm relay: dropped a malformed command ({size} bytes declared)")
            return False
        body = self._read(cmd, size - 10)
        if body is None:
            return False
        answer = self._forward(head + body)
        os.write(rsp, answer)
        return True

    def _forward(self, command: bytes) -> bytes:
        for attempt in (1, 2):  # a swtpm restarted since the last command: reconnect once
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self._sock.settimeout(30)
                    self._sock.connect(str(self.socket_path))
                self._sock.sendall(command)
                head = self._sock_read(10)
                size = struct.unpack(">I", head[2:6])[0]
                if not 10 <= size <= MAX_TPM_FRAME:
                    raise OSError(f"TPM answered a {size}-byte frame")
                return head + self._sock_read(size - 10)
            except OSError as exc:
                if self._sock is not None:
                    self._sock.close()
                self._sock = None
                if attempt == 2:
                    self.log(f"tpm relay: the TPM at {self.socket_path} does not answer ({exc})")
        return RELAY_UNREACHABLE

    def _sock_read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            assert self._sock is not None
            chunk = self._sock.recv(n - len(out))
            if not chunk:
                raise OSError("connection closed")
            out += chunk
        return out


def write_softhsm_conf(directory: Path) -> Path:
    """``directory/softhsm2.conf`` with its token directory ``directory/tokens``."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n")
    return conf


def init_softhsm_token(conf: Path, label: str, pin: str, so_pin: str | None = None) -> None:
    """A fresh token ``label`` with user PIN ``pin`` in the token directory of ``conf``."""
    if shutil.which(SOFTHSM_UTIL) is None:
        raise DeviceError("softhsm2-util is not installed (./bootstrap.sh installs it)")
    done = subprocess.run(
        [SOFTHSM_UTIL, "--init-token", "--free", "--label", label, "--pin", pin,
         "--so-pin", so_pin or secrets.token_hex(8)],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)}, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise DeviceError(f"softhsm2-util --init-token failed: {done.stderr.strip() or done.stdout.strip()}")


def softhsm_has_token(conf: Path, label: str) -> bool:
    done = subprocess.run([SOFTHSM_UTIL, "--show-slots"], env={**os.environ, "SOFTHSM2_CONF": str(conf)},
                          capture_output=True, text=True, timeout=120)
    return any(line.split(":", 1)[-1].strip() == label for line in done.stdout.splitlines()
               if line.strip().startswith("Label:"))


def _module(loaded, name: str) -> bytes:
    for mod_name, data in loaded.modules:
        if mod_name == name:
            return data
    raise DeviceError(f"devices.softhsm2.pin_module: the image has no module {name!r}")


#: what each device puts into its task's work dir (a directory the host serves; it stays the
#: host's when the work dir is the task's own filesystem image: ConfinementPolicy.workdir_passthrough)
WORKDIR_ENTRIES = {"swtpm": "tpm", "softhsm2": "softhsm"}


def workdir_entries(config: object) -> tuple[str, ...]:
    """The work-dir entries the devices declared in a task's ``config.devices`` provide."""
    devices = config.get("devices") if isinstance(config, dict) else None
    if not isinstance(devices, dict):
        return ()
    return tuple(WORKDIR_ENTRIES[d] for d in sorted(devices) if d in WORKDIR_ENTRIES)


@contextlib.contextmanager
def keystore_devices(loaded, run_dir: Path, log: Callable[[str], None],
                     error: type[Exception] = DeviceError) -> Iterator[list[str]]:
    """Start what the image's tasks declare under ``config.devices``; yields one line per device.
    A device that cannot start raises ``error`` (the boot's BootError: nothing is started)."""
    started: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            _start_all(loaded, run_dir, log, stack, started)
        except (DeviceError, OSError, subprocess.SubprocessError) as exc:
            raise error(f"key-storage devices: {exc}") from exc
        for line in started:
            log(line)
        yield started


def _start_all(loaded, run_dir: Path, log: Callable[[str], None], stack: contextlib.ExitStack,
               started: list[str]) -> None:
    for task in loaded.image.tasks:
        devices = (task.config or {}).get("devices") if isinstance(task.config, dict) else None
        if not devices:
            continue
        unknown = set(devices) - {"swtpm", "softhsm2"}
        if unknown:
            raise DeviceError(f"tasks.{task.name}.config.devices: unknown device(s) {sorted(unknown)}")
        workdir = run_dir / task.name
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = run_dir / ".keystore" / task.name
        private.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in (run_dir / ".keystore", private):  # traversable (for swtpm as nobody), not listable
            os.chmod(path, 0o711)
        if "swtpm" in devices:
            tpm = Swtpm(private / "swtpm")
            tpm.start()
            stack.callback(tpm.close)
            relay = FifoRelay(workdir / WORKDIR_ENTRIES["swtpm"], tpm.socket, log).start()
            stack.callback(relay.stop)
            started.append(f"{task.name}: software TPM 2.0 (swtpm, state {tpm.state_dir}) at {workdir / 'tpm'}")
        if "softhsm2" in devices:
            spec = devices["softhsm2"] or {}
            label = spec.get("label", "l4emu")
            pin = _module(loaded, spec["pin_module"]).decode().strip() if "pin_module" in spec \
                else spec.get("pin")
            if not isinstance(pin, str) or not pin:
                raise DeviceError(f"tasks.{task.name}.config.devices.softhsm2 needs pin_module (or pin)")
            conf = write_softhsm_conf(workdir / WORKDIR_ENTRIES["softhsm2"])
            if not softhsm_has_token(conf, label):
                so_pin = secrets.token_hex(8)
                init_softhsm_token(conf, label, pin, so_pin)
                (private / "softhsm-so-pin").write_text(so_pin + "\n")
            started.append(f"{task.name}: PKCS#11 token {label!r} (SoftHSM2) in {conf.parent}")
