"""Booting images in-process for tests, and reading what their tasks said."""
from __future__ import annotations

import json
import os
from pathlib import Path

from kernel_model.host.console import RecordingConsole
from kernel_model.host.supervisor import Supervisor
from kernel_model.logs import original

ROOT = Path(__file__).resolve().parents[1]
# Scales every System wait: inside the emulated aarch64 guest the HIL harness sets it
# (hil/qemu/timeouts.py), because a task boot there takes tens of times longer.
TIMEOUT_MULTIPLIER = float(os.environ.get("L4EMU_TEST_TIMEOUT_MULTIPLIER", "1") or 1)


class System:
    """A booted image: the supervisor (kernel + processes) and everything printed."""

    def __init__(self, sup: Supervisor, console: RecordingConsole):
        self.sup = sup
        self.console = console
        self.kernel = sup.kernel

    def run(self, timeout: float = 60, until=None) -> int | None:
        return self.sup.run(timeout_s=timeout * TIMEOUT_MULTIPLIER, until=until)

    def run_until_logged(self, text: str, timeout: float = 60) -> None:
        self.sup.run(timeout_s=timeout * TIMEOUT_MULTIPLIER, until=lambda: text in self.console.text())
        assert text in self.console.text(), f"never logged {text!r}:\n{self.console.text()}"

    def lines(self, tag: str) -> list[str]:
        prefix = f"{tag:<8}| "
        return [line[len(prefix):] for line in self.console.lines if line.startswith(prefix)]

    def results(self, tag: str) -> list[dict]:
        # the kernel prints task text escaped (kernel_model.logs.printable): parse what the task wrote
        return [json.loads(original(line[len("RESULT "):])) for line in self.lines(tag) if line.startswith("RESULT ")]

    def exited(self, name: str) -> int | None:
        return next((code for task, code in self.sup.exited if task == name), None)


