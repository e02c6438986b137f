"""One timeout model for every HIL layer: boot, each command, console inactivity, poweroff, a hard cap.

Every wait in ``hil/qemu`` (the console driver, ``l4emu hil run``), the pytest timeout of the
HIL tests on the host, the ``--timeout`` given to pytest *inside* the guest and the waits of the
project's own tests run there (``L4EMU_TEST_TIMEOUT_MULTIPLIER``, read by tests/systemlib.py)
come from one ``Timeouts`` value, and all of them are multiplied by the same ``multiplier``. A slow host
sets it once, ``L4EMU_HIL_TIMEOUT_MULTIPLIER=3`` (or ``--timeout-multiplier 3``), and no layer
is left behind: the outer layer always allows the inner one its whole budget plus a margin,
so the innermost timeout fires first and reports what it was waiting for.

Pure: no clock is read here; the callers own the clock.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

ENV = "L4EMU_HIL_TIMEOUT_MULTIPLIER"
TEST_ENV = "L4EMU_TEST_TIMEOUT_MULTIPLIER"  # the project's test helpers (tests/systemlib.py) scale by it
GUEST_SLOWDOWN = 10.0  # TCG runs this Python workload 10-40x slower than the host: the guest's tests get this


def multiplier_from_env(default: float = 1.0, environ: dict[str, str] | None = None) -> float:
    """``$L4EMU_HIL_TIMEOUT_MULTIPLIER`` as a positive float (``default`` when unset)."""
    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV} must be a positive number, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{ENV} must be a positive number, got {raw!r}")
    return value


@dataclass(frozen=True)
class Timeouts:
    """Unscaled budgets in seconds; ``scaled(...)`` applies the multiplier.

    - ``boot_s``: QEMU start (or a board's reset) to the guest's ready marker.
    - ``command_s``: one guest command, unless the caller gives its own budget.
    - ``inactivity_s``: the console may stay silent this long while a command runs; a hung guest
      is noticed before the command budget runs out.
    - ``interrupt_s``: after ^C, how long the shell may take to answer again.
    - ``poweroff_s``: ``poweroff -f`` to QEMU's exit.
    - ``session_s``: hard cap on one whole guest session (boot, every command, poweroff).
    """

    boot_s: float = 120.0
    command_s: float = 600.0
    inactivity_s: float = 300.0
    interrupt_s: float = 10.0
    poweroff_s: float = 30.0
    session_s: float = 3600.0
    multiplier: float = 1.0

    def __post_init__(self):
        if not self.multiplier > 0:
            raise ValueError(f"the timeout multiplier must be positive, got {self.multiplier}")

    @classmethod
    def from_env(cls, **overrides) -> Timeouts:
        return cls(multiplier=multiplier_from_env(), **overrides)

    def with_multiplier(self, multiplier: float) -> Timeouts:
        return replace(self, multiplier=multiplier)

    def scaled(self, seconds: float) -> float:
        return seconds * self.multiplier

    @property
    def boot(self) -> float:
        return self.scaled(self.boot_s)

    @property
    def command(self) -> float:
        return self.scaled(self.command_s)

    @property
    def inactivity(self) -> float:
        return self.scaled(self.inactivity_s)

    @property
    def interrupt(self) -> float:
        return self.scaled(self.interrupt_s)

    @property
    def poweroff(self) -> float:
        return self.scaled(self.poweroff_s)

    @property
    def session(self) -> float:
        return self.scaled(self.session_s)

    def guest_pytest_timeout(self, command_s: float) -> float:
        """``--timeout`` for pytest inside the guest, for a suite given ``command_s`` (unscaled) in all.

        One in-guest test may use the whole budget less a margin, so pytest-timeout in the guest
        fires (and names the test) before the host gives up on the command.
        """
        return self.scaled(max(command_s * 0.8, command_s - 60))

    def guest_test_multiplier(self) -> float:
        """``L4EMU_TEST_TIMEOUT_MULTIPLIER`` for the project's own tests run inside the guest."""
        return GUEST_SLOWDOWN * self.multiplier

    def host_test_timeout(self, *command_budgets_s: float, boots: int = 1) -> float:
        """The pytest-timeout for a host test that boots ``boots`` guests and runs commands with these budgets.

        Everything the test may legitimately wait for, plus poweroff and a margin, scaled: pytest's
        timeout on the host is the outermost layer and must never fire before an inner one.
        """
        inner = boots * (self.boot_s + self.poweroff_s) + sum(command_budgets_s) \
            + len(command_budgets_s) * self.interrupt_s
        return self.scaled(inner + 60)
