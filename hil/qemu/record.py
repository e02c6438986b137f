"""A run record: ``hil/runs/<timestamp>-<pid>/`` holds everything needed to judge and repeat a HIL run.

- ``transcript.log``: the serial console, byte for byte as received (flushed as it arrives,
  so a killed run keeps everything up to the kill);
- ``qemu-cmdline.sh``: QEMU's command line, one copy-paste shell line (with the serial port on
  this terminal instead of the harness's socket);
- ``qemu-stderr.log``: QEMU's own messages;
- ``junit/*.xml``: the JUnit XML written by pytest inside the guest;
- ``run.json``: QEMU's version, the sha256 of the kernel and initrd booted, the lock's digest,
  the timeout multiplier, timings, each command's status, and the verdict.

``run.json`` is written atomically whenever it changes, so it is valid JSON at every moment.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from hil.qemu.lock import sha256_file

DEFAULT_RUNS = Path(__file__).resolve().parents[1] / "runs"


def qemu_version(binary: str) -> str:
    """The first line of ``qemu --version`` ("QEMU emulator version 7.2.22 (Debian ...)"), or why not."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return out.splitlines()[0].strip() if out else "unknown"


@dataclass
class RunRecord:
    dir: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def create(cls, runs_dir: Path = DEFAULT_RUNS, *, now: dt.datetime | None = None, label: str = "") -> RunRecord:
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
        name = f"{stamp}-{os.getpid()}" + (f"-{label}" if label else "")
        path = Path(runs_dir) / name
        path.mkdir(parents=True, exist_ok=False)
        (path / "junit").mkdir()
        record = cls(path, {"started": stamp, "host": platform.node(), "commands": [], "verdict": "running"})
        record.save()
        return record

    @property
    def transcript(self) -> Path:
        return self.dir / "transcript.log"

    @property
    def qemu_stderr(self) -> Path:
        return self.dir / "qemu-stderr.log"

    def machine(self, *, qemu: str | None, argv: list[str], kernel: Path | None, initrd: Path | None,
                manifest: dict | None, multiplier: float, person_argv: list[str] | None = None,
                base: Path | None = None) -> None:
        """What was booted: QEMU's version and command line, the images' hashes, the lock.

        The run's initrd (108 MiB) is not kept: its overlay (a few MiB) is, and ``qemu-cmdline.sh``
        puts the initrd together again from the base and checks its sha256 before it boots.
        """
        import shlex
        import shutil

        if person_argv is not None and initrd is not None:
            overlay = initrd.with_name("overlay.cpio")
            lines = ["#!/bin/sh", "# QEMU as this run started it, with the serial port on this terminal",
                     "# (type `poweroff -f` in the guest to leave). Run it from anywhere.", "set -e",
                     'cd "$(dirname "$0")"']
            argv_here = list(person_argv)
            if base is not None and overlay.is_file():
                shutil.copyfile(overlay, self.dir / "overlay.cpio")
                lines += [f"cat {shlex.quote(str(base))} overlay.cpio > initrd.cpio",
                          f"echo '{sha256_file(initrd)}  initrd.cpio' | sha256sum -c -"]
                argv_here[argv_here.index(str(initrd))] = "initrd.cpio"
            lines.append(shlex.join(argv_here))
            script = self.dir / "qemu-cmdline.sh"
            script.write_text("\n".join(lines) + "\n")
            script.chmod(0o755)
        self.data.update({
            "qemu_version": qemu_version(qemu) if qemu else None,
            "qemu_argv": argv,
            "kernel": {"path": str(kernel), "sha256": sha256_file(kernel)} if kernel else None,
            "initrd": {"path": str(initrd), "sha256": sha256_file(initrd)} if initrd else None,
            "lock_sha256": (manifest or {}).get("lock_sha256"),
            "kernel_release": ((manifest or {}).get("kernel") or {}).get("release"),
            "timeout_multiplier": multiplier,
        })
        self.save()

    def command(self, cmd: str, status: int | None, seconds: float, error: str | None = None) -> None:
        self.data["commands"].append({"command": cmd, "status": status, "seconds": round(seconds, 2),
                                      **({"error": error} if error else {})})
        self.save()

    def junit(self, name: str, xml: bytes) -> Path:
        path = self.dir / "junit" / f"{name}.xml"
        path.write_bytes(xml)
        return path

    def finish(self, verdict: str, **extra) -> None:
        self.data.update(extra, verdict=verdict)
        self.save()

    def save(self) -> None:
        tmp = self.dir / ".run.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.dir / "run.json")
