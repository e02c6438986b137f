"""Which tests boot something, for the fast lane (``make test-unit``: ``pytest -m "not boots"``).

A test "boots" when it starts a process (a task, QEMU, swtpm, the l4emu CLI, openssl, ...) or
listens on a socket (a server). Which tests do is decided here by the fixtures (and fixture
parameters) they use, the names their own body calls and the files they live in, never by a list
of test names. In the fast lane (L4EMU_UNIT_LANE=1, set by
``make test-unit``) every other test runs inside ``no_booting()``: starting a process or calling
listen() raises ``BootsInUnitLane``, so a test that boots without being classified here fails in
the fast lane instead of slowing it down (tests/conftest.py wires this in).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import CodeType
from typing import Any

TESTS = Path(__file__).resolve().parent

BOOTING_FIXTURES = frozenset({
    "boot",             # tests/conftest.py: a Supervisor with task processes
    "running", "kit",   # tests/hil/est_ca/conftest.py: the development EST CA serving on a port
    "attack",           # tests/capability_violations/test_wvds_attacks.py: WvdS under attack
    "enrolled",         # tests/tasks/est_service/test_est_task_e2e.py: est_service against the CA
})
# Fixtures that boot only when the test itself asks for them (not merely through another fixture):
# the TPM and PKCS#11 devices a test starts with devices.tpm() / devices.hsm().
BOOTING_ARGUMENTS = frozenset({"devices"})
# Parametrised fixtures whose some values boot: the TPM (swtpm) and the PKCS#11 token (softhsm2-util).
BOOTING_PARAMS = {"key_backend": frozenset({"tpm", "hsm"})}
# Names that, used in a test's own body, start something: a tool run, a server.
BOOTING_CALLS = frozenset({"subprocess", "Popen", "posix_spawn", "serve", "create_server", "start_dev_ca", "listen",
                           "host_est_ca", "boot_image", "run_scenario"})
BOOTING_FILES = (  # relative to tests/; a trailing / means the whole directory
    "system/", "hil/test_guest.py", "hil/test_smoke.py", "hil/test_boards.py", "hil/test_qemu.py",
    "hil/test_lock.py",                     # fake apt-get/pip scripts on PATH
    "hil/est_ca/test_est_ca_binding.py",    # l4emu boot with the CA
    "capabilities/test_graph.py",           # graphviz's dot
    "tasks/runtime/test_confine.py",        # confined probe processes
    "kernel_model/host/test_zygote.py",     # the task template process
    "l4emu/test_cli.py", "l4emu/test_scaffold.py", "test_docs.py",
)

# Every way the code base starts a process or a server.
SPAWNERS = (("os", "fork"), ("os", "forkpty"), ("os", "posix_spawn"), ("os", "posix_spawnp"),
            ("pty", "fork"), ("subprocess", "Popen._execute_child"), ("socket", "socket.listen"))


class BootsInUnitLane(AssertionError):
    pass


def _names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _names(const)
    return names


def boots(item: Any) -> bool:
    """Whether a collected test (``pytest.Item``) boots something."""
    if item.get_closest_marker("hil") or BOOTING_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(params.get(name) in values for name, values in BOOTING_PARAMS.items()):
        return True
    function = getattr(item, "function", None)
    if function is not None:
        code = function.__code__
        if BOOTING_ARGUMENTS.intersection(code.co_varnames[:code.co_argcount]):
            return True
        if BOOTING_CALLS.intersection(_names(code)):
            return True
    path = Path(str(item.path)).resolve()
    rel = path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else ""
    return any(rel == f or (f.endswith("/") and rel.startswith(f)) for f in BOOTING_FILES)


@contextmanager
def no_booting(on_spawn: Callable[[str], None] | None = None) -> Iterator[None]:
    """Within: every spawner in SPAWNERS raises ``BootsInUnitLane`` (or, given ``on_spawn``,
    calls ``on_spawn(name)`` and goes ahead)."""
    saved: list[tuple[Any, str, Any]] = []
    for module_name, attr in SPAWNERS:
        owner: Any = importlib.import_module(module_name)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        if not hasattr(owner, name):
            continue
        original = getattr(owner, name)

        def refuse(*args: Any, _original: Any = original, _label: str = f"{module_name}.{attr}",
                   **kwargs: Any) -> Any:
            if on_spawn is None:
                raise BootsInUnitLane(f"{_label}: this test boots something; tests/lanes.py "
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
