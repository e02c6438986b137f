"""Chaos on demand (l4emu/chaos.py, ``l4emu boot --chaos SEED``)."""
from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import pytest

from l4emu.chaos import schedule, targets_for


def first(seed, targets, n=20):
    return list(itertools.islice(schedule(seed, targets, first=3.0, mean_gap=5.0), n))


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another():
    a, b = first(7, ["crypto", "est", "netproxy"]), first(7, ["netproxy", "crypto", "est"])
    assert a == b  # deterministic, whatever order the targets are named in
    assert a != first(8, ["crypto", "est", "netproxy"])
    assert a[0].at == 3.0 and all(2.5 <= y.at - x.at <= 7.5 for x, y in itertools.pairwise(a))
    assert {f.task for f in a} <= {"crypto", "est", "netproxy"} and len({f.task for f in a}) > 1


def test_root_tasks_are_targets_only_when_named():
    assert targets_for(["a", "b"], None) == ["a", "b"]
    assert targets_for(["a", "b"], ["moe"]) == ["moe"]
    with pytest.raises(ValueError, match="no task 'c'"):
        targets_for(["a", "b"], ["c"])


IMAGE = """
name: chaotic
run: {until: [client]}
objects:
  svc: {type: gate}
tasks:
  server:
    program: testing.store_server
    args: [count]
    restart: {policy: always, backoff: {initial: 10ms, max: 100ms}}
    caps: {svc: svc:svr}
  client:
    program: testing.load_client
    args: ["20", until-recovered]
    caps: {svc: svc:rw}
"""


def test_boot_with_chaos_kills_and_the_system_recovers(tmp_path):
    """The client runs until it saw the server vanish and come back: the system ends only after a
    chaos kill was recovered (the subprocess timeout is a hang guard)."""
    image = tmp_path / "chaotic.yaml"
    image.write_text(textwrap.dedent(IMAGE))
    run = tmp_path / "work"
    out = subprocess.run([sys.executable, "-m", "l4emu.cli", "boot", str(image), "--headless", "--chaos", "5",
                          "--chaos-tasks", "server", "--chaos-interval", "0.5", "--run-dir", str(run)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "chaos (seed 5): killing one of server about every 0.5 s" in out.stdout
    assert "chaos: fault 1 at 3: killed server" in out.stdout
    assert '"recovered": true' in out.stdout and '"lost": 0' in out.stdout
    assert (run / "server").is_dir() and (run / "client").is_dir()  # --run-dir: the work dirs are there
    summary = out.stdout[out.stdout.rindex("peak memory / quota"):]
    assert "fault(s) injected" in summary


def test_chaos_names_only_tasks_of_the_image(tmp_path):
    image = tmp_path / "chaotic.yaml"
    image.write_text(textwrap.dedent(IMAGE))
    out = subprocess.run([sys.executable, "-m", "l4emu.cli", "boot", str(image), "--headless", "--chaos", "1",
                          "--chaos-tasks", "nosuch", "--run-dir", str(tmp_path / "w")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no task 'nosuch'" in out.stdout + out.stderr
