"""The l4emu command line: help everywhere, argument checks, warnings, pipes, tables that fit their cells."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from l4emu.cli import main
from l4emu.dump import render_dump
from l4emu.live import name_protocols

ROOT = Path(__file__).resolve().parents[2]
L4EMU = [sys.executable, "-m", "l4emu.cli"]


@pytest.mark.parametrize("command", ["est-ca", "hil"])
def test_pass_through_commands_show_their_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert f"usage: l4emu {command}" in capsys.readouterr().out


def test_est_ca_state_is_the_projects_wherever_it_runs(tmp_path, monkeypatch):
    """`l4emu est-ca ca-cert` from another directory must not make a second CA in ./var."""
    import hil.est_ca.cli as est_cli
    seen = []
    monkeypatch.setattr(est_cli, "main", lambda argv: seen.append(list(argv)) or 0)
    monkeypatch.chdir(tmp_path)
    assert main(["est-ca", "ca-cert"]) == 0
    assert seen[-1] == ["ca-cert", "--state-dir", str(ROOT / "var" / "est-ca")]
    assert main(["est-ca", "serve", "--state-dir", "elsewhere", "--port", "0"]) == 0
    assert seen[-1] == ["serve", "--state-dir", "elsewhere", "--port", "0"]
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("flag", ["--timeout", "--duration"])
@pytest.mark.parametrize("value", ["-1", "0", "nan", "x"])
def test_non_positive_seconds_are_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["boot", str(ROOT / "images" / "hello.yaml"), flag, value])
    assert info.value.code == 2
    assert "seconds" in capsys.readouterr().err


def test_check_on_a_fresh_clone_notes_missing_modules(tmp_path):
    image = tmp_path / "i.yaml"
    image.write_text("name: i\nmodules:\n  ta: not-yet/ca.crt\ntasks:\n  a: {program: hello.ping_server}\n")
    out = subprocess.run(L4EMU + ["check", str(image)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "note" in out.stdout and "modules.ta" in out.stdout and "not-yet/ca.crt" in out.stdout


def test_no_confine_warns(tmp_path):
    out = subprocess.run(L4EMU + ["boot", str(ROOT / "images" / "hello.yaml"), "--no-confine", "--timeout", "60"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning" in out.stderr and "WITHOUT OS confinement" in out.stderr


def test_a_closed_pipe_stops_the_system_and_says_so():
    proc = subprocess.Popen(L4EMU + ["boot", str(ROOT / "images" / "hello.yaml"), "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    _, err = proc.communicate(timeout=120)
    # the system may have finished before the next line was written; if not, it stopped on the pipe
    if proc.returncode != 0:
        assert proc.returncode == 141 and b"broken pipe" in err, err
    assert b"Traceback" not in err


def test_dump_caps_keeps_memory_out_of_the_label_columns():
    dump = {"client": [
        {"selector": 0x10000, "object": "ping", "type": "gate", "rights": "rw", "label": 0x10,
         "derived_from": "moe:0x12000"},
        {"address": 0x7f0000, "object": "ram@0x100000", "type": "memory", "rights": "rw", "size": 4096,
         "offset": 0}]}
    out = Console(file=io.StringIO(), width=300)
    render_dump(dump, out)
    text = out.file.getvalue()
    caps, memory = text.split("memory mapped into client")
    assert "4096" not in caps and "offset" not in caps
    header = next(line for line in memory.splitlines() if "address" in line)
    assert header.split() == ["address", "object", "rights", "size", "(bytes)", "offset"]
    assert "0x7f0000" in memory and "4096" in memory


def test_trace_names_protocols():
    assert (name_protocols("moe -> kernel log kernel-log proto -13 -> 0")
            == "moe -> kernel log kernel-log proto LOG -> 0")
    assert name_protocols("a -> b call proto 0x4000 label 0x1") == "a -> b call proto DATASPACE label 0x1"
    assert name_protocols("a -> b call proto 0x100 label 0x11") == "a -> b call proto 0x100 label 0x11"


def test_plain_output_is_not_wrapped_at_80_columns(tmp_path):
    """Off a terminal, long lines and table cells stay whole (CI logs, pipes)."""
    out = subprocess.run(L4EMU + ["boot", str(ROOT / "images" / "hello.yaml"), "--timeout", "60"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert any(len(line) > 80 and "confinement: enforced" in line for line in lines)
    header = next(line for line in lines if line.startswith("task "))
    assert "peak memory / quota" in header and len(header) > 80


def test_served_counts_calls_and_irq_deliveries_not_kernel_operations():
    from l4emu.live import LiveSink
    sink = LiveSink()
    for line in ("client -> server call proto 0x100 label 0x11 2w 0 item(s)",
                 "evil -> server send proto 0x100 label 0x0 1w 0 item(s)",
                 "irq kick -> server label 0x20",
                 "server -> kernel irq kick proto -18 -> 0",
                 "server -> client reply status 0"):
        sink.trace(line)
    assert sink.served == {"server": 3}
    assert sink.lines == []  # trace lines are counted, printed only with --trace


def test_boot_flags_reach_the_library(monkeypatch, tmp_path):
    import l4emu.boot as boot_mod
    seen = {}
    monkeypatch.setattr(boot_mod, "boot_image", lambda path, **kw: seen.update(kw, path=path) or 0)
    assert main(["boot", "x.yaml", "--headless", "--duration", "5", "--json-summary", str(tmp_path / "s.json")]) == 0
    assert seen["live"] is False and seen["duration_s"] == 5.0 and seen["json_summary"] == tmp_path / "s.json"
    assert main(["boot", "x.yaml"]) == 0
    assert seen["live"] is None and seen["duration_s"] is None  # live view decided by the terminal


def test_image_errors_are_one_line_each(tmp_path):
    path = tmp_path / ("a-rather-long-directory-name-" * 3) / "image.yaml"
    path.parent.mkdir()
    path.write_text("name: t\ntasks:\n  a: {program: hello.ping_server, restart: sometimes-but-not-always-please}\n")
    out = subprocess.run(L4EMU + ["boot", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:3:") and len(lines[0]) > 80
