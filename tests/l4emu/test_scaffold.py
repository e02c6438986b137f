"""l4emu new-task: the scaffold boots and its own test passes; nothing is overwritten."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from l4emu.cli import main
from l4emu.scaffold import ScaffoldError, scaffold
from systemlib import ROOT


@pytest.fixture
def name():
    """A task name no one else uses; its files are removed afterwards (they live in the project)."""
    name = f"zz_scaf{os.getpid() % 100000}"
    yield name
    shutil.rmtree(ROOT / "tasks" / name, ignore_errors=True)
    shutil.rmtree(ROOT / "tests" / "tasks" / name, ignore_errors=True)
    (ROOT / "images" / f"{name}.yaml").unlink(missing_ok=True)


def test_new_task_boots_and_its_test_passes(name, capsys):
    assert main(["new-task", name]) == 0
    assert f"images/{name}.yaml" in capsys.readouterr().out
    test = ROOT / "tests" / "tasks" / name / f"test_{name}.py"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
    assert main(["new-task", name]) == 2  # a second time: nothing is overwritten
    assert "not overwriting" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["Bad", "1x", "has-dash", "x" * 17, "sensor", "runtime"])
def test_bad_names_are_refused(bad, tmp_path):
    with pytest.raises(ScaffoldError):
        scaffold(bad, tmp_path)
    assert not any(tmp_path.iterdir())
