"""Shared fixtures (helpers live in tests/systemlib.py, importable as ``systemlib``), and the
fast lane's rule: which tests boot something (``boots`` marker; ``make test-unit`` runs the rest)."""
from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the HIL guest ships pytest without hypothesis (its suites need none)
    settings = None  # type: ignore[misc,assignment]

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


# ---- the fast lane (make test-unit) ------------------------------------------------------------
# A test "boots" when it starts a process (a task, QEMU, swtpm, the l4emu CLI, openssl, ...) or
# listens on a socket (a server). Which tests do is decided here, by the fixtures they use and by
# the files they live in, never by a list of test names; `make test-unit` (L4EMU_UNIT_LANE=1)
# runs every other test with process creation and listen() made to fail, so a test that boots
# without being classified here fails in the fast lane instead of slowing it down.
BOOTING_FIXTURES = frozenset({
    "boot",             # tests/conftest.py: a Supervisor with task processes
    "running", "kit",   # tests/hil/est_ca: the development EST CA serving on a port
})
BOOTING_FILES = (
    "system/", "hil/test_guest.py", "hil/test_smoke.py", "hil/test_boards.py", "hil/test_qemu.py",
    "l4emu/test_cli.py", "l4emu/test_scaffold.py", "test_docs.py",
)
TESTS = Path(__file__).parent


def boots(item: pytest.Item) -> bool:
    if item.get_closest_marker("hil") or BOOTING_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    path = Path(str(item.path)).resolve()
    rel = path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else ""
    return any(rel == f or (f.endswith("/") and rel.startswith(f)) for f in BOOTING_FILES)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "boots: starts a process or a server (make test-unit leaves it out)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if boots(item):
            item.add_marker(pytest.mark.boots)


class BootsInUnitLane(AssertionError):
    pass


_SPAWNERS = (("os", "fork"), ("os", "forkpty"), ("os", "posix_spawn"), ("os", "posix_spawnp"),
             ("pty", "fork"), ("subprocess", "Popen._execute_child"), ("socket", "socket.listen"))


@contextmanager
def no_booting(on_spawn=None) -> Iterator[None]:
    """Every way the code base starts a process or a server raises ``BootsInUnitLane`` (or calls
    ``on_spawn(name)`` and goes ahead)."""
    import importlib
    saved = []
    for module_name, attr in _SPAWNERS:
        owner = importlib.import_module(module_name)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        if not hasattr(owner, name):
            continue
        original = getattr(owner, name)
        label = f"{module_name}.{attr}"

        def refuse(*args, _original=original, _label=label, **kwargs):
            if on_spawn is None:
                raise BootsInUnitLane(f"{_label}: this test boots something; tests/conftest.py "
                                      "(BOOTING_FIXTURES / BOOTING_FILES) must classify it")
            on_spawn(_label)
            return _original(*args, **kwargs)
        saved.append((owner, name, original))
        setattr(owner, name, refuse)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    lane = os.environ.get("L4EMU_UNIT_LANE", "")
    if not lane or item.get_closest_marker("boots"):
        yield
        return
    if lane.startswith("record:"):  # L4EMU_UNIT_LANE=record:FILE lists what unmarked tests start
        def note(label: str) -> None:
            with open(lane.removeprefix("record:"), "a") as f:
                f.write(f"{item.nodeid}\t{label}\n")
        with no_booting(note):
            yield
    else:
        with no_booting():
            yield
