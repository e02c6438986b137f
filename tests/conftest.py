"""Shared fixtures (helpers live in tests/systemlib.py, importable as ``systemlib``), and the
fast lane's rule: which tests boot something (``boots`` marker; ``make test-unit`` runs the rest)."""
from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the HIL guest ships pytest without hypothesis (its suites need none)
    settings = None  # type: ignore[misc,assignment]

import lanes
from kernel_model.host.console import RecordingConsole
from kernel_model.host.images import load_image
from kernel_model.host.supervisor import Supervisor
from systemlib import System

# Property tests judge results, never speed: no per-example deadline and no "too slow" health
# check, both of which fail on a loaded 2-core CI machine although nothing is wrong.
if settings is not None:
    settings.register_profile("l4emu", deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("l4emu")


@pytest.fixture
def boot(tmp_path):
    """``boot(yaml_text_or_path, files={...}) -> System`` (shut down after the test)."""
    systems: list[Supervisor] = []

    def _boot(image: str | Path, files: dict[str, str] | None = None, *, confine: bool = True) -> System:
        if isinstance(image, Path):
            path = image
        else:
            path = tmp_path / "image.yaml"
            path.write_text(textwrap.dedent(image))
            for name, content in (files or {}).items():
                (tmp_path / name).write_text(content)
        console = RecordingConsole()
        from kernel_model.host.confinement import policy_for
        sup = Supervisor(load_image(path), console, confinement=policy_for if confine else None,
                         run_dir=tmp_path / "run")
        systems.append(sup)
        sup.start()
        return System(sup, console)

    yield _boot
    for sup in systems:
        sup.shutdown()


# ---- the fast lane (make test-unit): tests/lanes.py decides which tests boot ---------------------
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "boots: starts a process or a server (make test-unit leaves it out)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if lanes.boots(item):
            item.add_marker(pytest.mark.boots)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """In the fast lane (L4EMU_UNIT_LANE=1) a test not marked ``boots`` cannot start a process or
    a server; L4EMU_UNIT_LANE=record:FILE lets it, and lists what it started in FILE."""
    lane = os.environ.get("L4EMU_UNIT_LANE", "")
    if not lane or item.get_closest_marker("boots"):
        yield
        return
    if lane.startswith("record:"):
        def note(label: str) -> None:
            with open(lane.removeprefix("record:"), "a") as f:
                f.write(f"{item.nodeid}\t{label}\n")
        with lanes.no_booting(note):
            yield
    else:
        with lanes.no_booting():
            yield
