"""Every input the coverage-guided fuzzer ever crashed the kernel with stays a regression test.

Files in ``crashers/`` are named ``<target>-<what>``; each is replayed through the same
target function ``make fuzz`` runs (tests/fuzz/fuzz_kernel.py), without atheris.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("fuzz_kernel", HERE / "fuzz_kernel.py")
assert _spec is not None and _spec.loader is not None
fuzz_kernel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_kernel)

CRASHERS = sorted((HERE / "crashers").iterdir())


@pytest.mark.parametrize("path", CRASHERS, ids=lambda p: p.name)
def test_a_former_crasher_is_handled(path):
    target = fuzz_kernel.TARGETS[path.name.split("-", 1)[0]]
    target(path.read_bytes())


def test_there_are_crashers_to_replay():
    assert {p.name.split("-", 1)[0] for p in CRASHERS} == {"decode", "kernel"}
