"""A guest for each test that needs one, booted as rarely as possible and never handed out dirty.

Booting costs seconds to a minute under TCG, so tests share one guest; but a command that
timed out (and was interrupted with ^C) may leave processes or half-written files behind, so
``GuestPool.get()`` replaces a guest that is no longer ``clean`` (or whose QEMU died) by a
freshly booted one. Every guest of a pool boots the same image, writes into the same
transcript and QEMU stderr file, and is counted in ``boots``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TextIO

from hil.qemu.build import Image
from hil.qemu.machine import Machine, MachineConfig


class GuestPool:
    def __init__(self, image: Image, config: MachineConfig = MachineConfig(), *, log_path: Path | None = None,
                 stderr_path: Path | None = None, console: TextIO | None = None):
        self.image = image
        self.config = config
        self.log_path = log_path
        self.stderr_path = stderr_path
        self.console = console
        self.boots = 0
        self.boot_seconds: list[float] = []
        self._machine: Machine | None = None

    def get(self) -> Machine:
        machine = self._machine
        if machine is not None and (not machine.clean or machine._child is None):
            machine.stop()
            machine = self._machine = None
        if machine is None:
            machine = Machine(self.image, self.config, log_path=self.log_path, stderr_path=self.stderr_path,
                              console=self.console)
            self.boots += 1
            self.boot_seconds.append(machine.start())
            self._machine = machine
        return machine

    def close(self) -> None:
        machine, self._machine = self._machine, None
        if machine is not None:
            machine.stop()

    def __enter__(self) -> GuestPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
