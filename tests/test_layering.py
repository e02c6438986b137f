"""The layering, executable: which package may import which (trio's ``test_exports`` style).

The checker reads source text with ``ast`` and never imports the code it judges. Every import
counts: module level, inside functions (lazy imports), under ``if TYPE_CHECKING``. The rules:

- ``capabilities`` imports nothing of the project and does no I/O;
- ``protocols`` and ``durable`` import nothing of the project but ``capabilities``;
- the kernel core (``kernel_model/*.py`` outside ``host/``) imports only ``capabilities`` and
  ``protocols`` (and the core itself) and does no I/O;
- ``kernel_model`` (``host/`` included) never imports ``l4emu``, ``hil``, ``tasks``, ``roottasks``;
- ``tasks.runtime`` imports only the kernel ABI (``KERNEL_ABI``), ``protocols``, ``durable``,
  ``capabilities``;
- services (``tasks/<service>``) import only ``tasks.runtime``, ``protocols``, ``durable`` and
  their own package; ``roottasks`` like services plus the kernel ABI;
- ``hil`` never imports ``tasks``, ``roottasks`` or ``l4emu``; ``l4emu`` may import anything.

Two readings the rules leave open, decided here: ``capabilities`` (pure, importing nothing) may be
imported by every layer — ``protocols``, ``durable`` and ``tasks.runtime`` are allowed it by name,
and Moe validates the image with it; ``tasks/testing`` (the adversary and probes, which forge raw
frames on purpose) is held to the ``roottasks`` rule: services plus the kernel ABI.

"No I/O" means: no standard-library module that reaches the OS (``IO_MODULES``), no third-party
module except the pure ones in ``PURE_THIRD_PARTY``, and no call of the I/O builtins
(``open``, ``print``, ``input``, ``breakpoint``, ``__import__``).
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("capabilities", "protocols", "durable", "kernel_model", "roottasks", "tasks", "hil", "l4emu")

# What a task may know of the kernel: its numbers and its frames (and the boot record, which
# lives in one of these; add its module here if it gets one of its own).
KERNEL_ABI = ("kernel_model.abi", "kernel_model.wire", "kernel_model.bootrecord")

IO_MODULES = frozenset({
    "os", "io", "sys", "posix", "nt", "socket", "socketserver", "ssl", "select", "selectors", "mmap",
    "fcntl", "termios", "tty", "pty", "signal", "resource", "pwd", "grp", "subprocess",
    "multiprocessing", "threading", "_thread", "concurrent", "asyncio", "shutil", "tempfile",
    "pathlib", "glob", "fileinput", "filecmp", "logging", "ctypes", "http", "urllib", "ftplib",
    "smtplib", "xmlrpc", "sqlite3", "dbm", "shelve", "webbrowser", "time", "sched", "importlib",
    "code", "pdb", "faulthandler", "atexit", "gc",
})
IO_BUILTINS = frozenset({"open", "print", "input", "breakpoint", "__import__"})
PURE_THIRD_PARTY = frozenset({"yaml"})  # capabilities.image parses YAML text it is handed


@dataclass(frozen=True)
class Layer:
    name: str
    allowed: tuple[str, ...] | None  # project prefixes it may import; None: any
    forbidden: tuple[str, ...] = ()  # project prefixes it may never import (wins over allowed)
    pure: bool = False  # no I/O


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> Layer | None:
    """The layer a project module belongs to (None: not a layered module, e.g. tests)."""
    top = module.split(".")[0]
    parts = module.split(".")
    if top == "capabilities":
        return Layer("capabilities", ("capabilities",), pure=True)
    if top in ("protocols", "durable"):
        return Layer(top, (top, "capabilities"))
    if _within(module, "kernel_model.host"):
        return Layer("kernel host", None, forbidden=("l4emu", "hil", "tasks", "roottasks"))
    if top == "kernel_model":
        return Layer("kernel core", ("kernel_model", "capabilities", "protocols"),
                     forbidden=("kernel_model.host",), pure=True)
    if _within(module, "tasks.runtime"):
        return Layer("task runtime", ("tasks.runtime", *KERNEL_ABI, "protocols", "durable", "capabilities"))
    if top == "tasks" and len(parts) >= 2 and parts[1] != "__init__":
        own = f"tasks.{parts[1]}"
        base = ("tasks.runtime", "protocols", "durable", "capabilities", own)
        if own == "tasks.testing":
            return Layer("test program", (*base, *KERNEL_ABI))
        return Layer("service", base)
    if top == "tasks":
        return Layer("tasks package", ("tasks",))
    if top == "roottasks":
        return Layer("root task", ("roottasks", "tasks.runtime", "protocols", "durable", "capabilities", *KERNEL_ABI))
    if top == "hil":
        return Layer("hil", None, forbidden=("tasks", "roottasks", "l4emu"))
    if top == "l4emu":
        return Layer("l4emu", None)
    return None


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return dotted.split(".")[0] in PROJECT and (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file())


def imports_of(module: str, source: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """Every module ``source`` imports, as (line, absolute dotted name); relative imports resolved.

    ``from X import a`` yields ``X.a`` when that is a module of the repository, else ``X``."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "__future__":
                continue
            found += [(node.lineno, f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
                      for alias in node.names]
    return found


def io_calls_of(source: str) -> list[tuple[int, str]]:
    return [(node.lineno, node.func.id) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in IO_BUILTINS]


def violations(module: str, source: str, *, is_package: bool = False) -> set[tuple[str, str]]:
    """The rule breaks in one module, as (module, what it imports or calls)."""
    layer = layer_of(module)
    if layer is None:
        return set()
    broken: set[tuple[str, str]] = set()
    for _line, target in imports_of(module, source, is_package=is_package):
        top = target.split(".")[0]
        if top in PROJECT:
            if any(_within(target, p) for p in layer.forbidden) or (
                    layer.allowed is not None and not any(_within(target, p) for p in layer.allowed)):
                broken.add((module, target))
        elif layer.pure:
            stdlib = top in sys.stdlib_module_names
            if (stdlib and top in IO_MODULES) or (not stdlib and top not in PURE_THIRD_PARTY):
                broken.add((module, target))
    if layer.pure:
        broken |= {(module, f"{name}()") for _line, name in io_calls_of(source)}
    return broken


def project_modules() -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is_package) for every layered package that exists (protocols and
    durable are checked once they appear)."""
    out: dict[str, tuple[Path, bool]] = {}
    for top in PROJECT:
        for path in sorted((ROOT / top).rglob("*.py")) if (ROOT / top).is_dir() else ():
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            out[".".join(parts)] = (path, is_package)
    return out


def all_violations() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for module, (path, is_package) in project_modules().items():
        found |= violations(module, path.read_text(), is_package=is_package)
    return found


# The imports that break the rules on main today. This list may only shrink: the test fails on a
# violation not listed here AND on a listed one that no longer exists, so whoever removes one
# removes its line. The lead empties it when the layering branches are merged.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()  # (importer, imported) pairs tolerated for now: none left


def judge(found: set[tuple[str, str]], known: set[tuple[str, str]]) -> list[str]:
    """What is wrong with the tree: violations not known, and known ones that are gone."""
    problems = [f"breaks the layering (rules: tests/test_layering.py's docstring): {v}" for v in sorted(found - known)]
    problems += [f"fixed, so remove it from KNOWN_VIOLATIONS (it may only shrink): {v}" for v in sorted(known - found)]
    return problems


def test_the_layering_holds():
    assert judge(all_violations(), KNOWN_VIOLATIONS) == []


def test_known_violations_may_only_shrink():
    found = {("kernel_model.host.supervisor", "tasks.runtime.confine"), ("hil.est_ca.store", "tasks.runtime.files")}
    assert judge(found, found) == []
    fixed = judge(found - {("hil.est_ca.store", "tasks.runtime.files")}, found)
    assert fixed == ["fixed, so remove it from KNOWN_VIOLATIONS (it may only shrink): "
                     "('hil.est_ca.store', 'tasks.runtime.files')"]
    new = judge(found | {("kernel_model.kernel", "hil.qemu")}, found)
    assert new == ["breaks the layering (rules: tests/test_layering.py's docstring): "
                   "('kernel_model.kernel', 'hil.qemu')"]


def test_every_layered_package_is_seen():
    modules = project_modules()
    for top in ("capabilities", "kernel_model", "kernel_model.host", "roottasks", "tasks.runtime", "hil", "l4emu"):
        assert top in modules
        assert layer_of(top) is not None
    assert layer_of("kernel_model.kernel").name == "kernel core"
    assert layer_of("kernel_model.host.supervisor").name == "kernel host"
    assert layer_of("tasks.crypto_service.service").name == "service"


def _source(module: str) -> tuple[str, bool]:
    path, is_package = project_modules()[module]
    return path.read_text(), is_package


@pytest.mark.parametrize(("module", "added", "expected"), [
    # the kernel core imports neither the application layer, hil, tasks nor the host shell
    ("kernel_model.kernel", "import hil.qemu", "hil.qemu"),
    ("kernel_model.kernel", "def later():\n    from l4emu import cli\n", "l4emu.cli"),
    ("kernel_model.invoke", "from kernel_model.host import supervisor", "kernel_model.host.supervisor"),
    ("kernel_model.kernel", "from .host.console import Console", "kernel_model.host.console"),
    # ... and does no I/O, not even lazily or through a builtin
    ("kernel_model.kernel", "def later():\n    import socket\n", "socket"),
    ("kernel_model.wire", "import os.path", "os.path"),
    ("kernel_model.objects", "from selectors import DefaultSelector", "selectors"),
    ("kernel_model.events", "def log(x):\n    print(x)\n", "print()"),
    ("kernel_model.abi", "import rich", "rich"),
    # the host shell may do I/O but never imports the layers above the kernel
    ("kernel_model.host.supervisor", "from tasks.runtime import channel", "tasks.runtime.channel"),
    ("kernel_model.host.images", "import roottasks.moe", "roottasks.moe"),
    # capabilities is pure
    ("capabilities.rights", "import kernel_model.abi", "kernel_model.abi"),
    ("capabilities.image", "from pathlib import Path", "pathlib"),
    ("capabilities.mapdb", "def f(p):\n    return open(p).read()\n", "open()"),
    # the task runtime knows the kernel only by its ABI; services only the runtime
    ("tasks.runtime.env", "from kernel_model import kernel", "kernel_model.kernel"),
    ("tasks.crypto_service.service", "from kernel_model.abi import L4Error", "kernel_model.abi"),
    ("tasks.crypto_service.service", "from tasks.est_service import csr", "tasks.est_service.csr"),
    ("roottasks.sigma0", "from kernel_model.host import supervisor", "kernel_model.host.supervisor"),
    # hil never imports tasks, roottasks or the application layer
    ("hil.qemu.machine", "from tasks.runtime import shm", "tasks.runtime.shm"),
    ("hil.est_ca", "from l4emu import boot", "l4emu.boot"),
])
def test_the_checker_catches_a_forbidden_import(module, added, expected):
    source, is_package = _source(module)
    before = violations(module, source, is_package=is_package)
    after = violations(module, source + "\n" + added + "\n", is_package=is_package)
    assert after - before == {(module, expected)}


@pytest.mark.parametrize(("module", "added"), [
    ("kernel_model.kernel", "from capabilities.rights import CapRights"),
    ("kernel_model.kernel", "import protocols.frames"),
    ("kernel_model.kernel", "from . import abi"),
    ("kernel_model.host.supervisor", "import socket\nfrom kernel_model import kernel"),
    ("tasks.runtime.env", "from kernel_model.wire import Frame"),
    ("tasks.crypto_service.service", "from tasks.runtime import shm\nfrom protocols import crypto\nimport durable"),
    ("tasks.crypto_service.service", "from . import keys\nimport socket"),
    ("roottasks.sigma0", "from kernel_model.abi import L4Error"),
    ("protocols.crypto", "from capabilities.rights import CapRights\nimport struct"),
    ("hil.qemu.machine", "from kernel_model.host.images import load_image"),
    ("l4emu.cli", "import tasks.runtime.files\nimport roottasks.moe"),
])
def test_the_checker_allows_what_the_rules_allow(module, added):
    source, is_package = _source(module) if module in project_modules() else ("", False)
    assert violations(module, source + "\n" + added + "\n", is_package=is_package) == violations(
        module, source, is_package=is_package)


def test_relative_imports_resolve_against_the_package():
    assert imports_of("tasks.crypto_service", "from .keys import K\nfrom . import service", is_package=True) == [
        (1, "tasks.crypto_service.keys"), (2, "tasks.crypto_service.service")]
    assert imports_of("tasks.crypto_service.keystore", "from .. import runtime") == [(1, "tasks.runtime")]
    assert violations("hil.est_ca.server", "from ...tasks import est_service") == {
        ("hil.est_ca.server", "tasks.est_service")}
