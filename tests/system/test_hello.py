"""Booting images/hello.yaml end to end: output, exit status, live capability tables."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from capabilities.rights import CapRights
from systemlib import ROOT


def test_hello_boots_runs_and_exits_zero(boot):
    system = boot(ROOT / "images" / "hello.yaml")
    assert system.run(timeout=60) == 0
    client = system.lines("client")
    assert "5 calls answered" in client
    assert "rom/greeting says: Hello from rom/greeting, a boot module." in client
    assert "server answered through shared memory: HELLO THROUGH SHARED MEMORY" in client
    assert any(line.startswith("shared-memory request of 27 bytes") for line in system.lines("pingsrv"))
    assert "all of client finished; system exit status 0" in system.lines("moe")
    assert system.kernel.violations == []


def test_live_capability_tables_equal_the_image(boot):
    system = boot(ROOT / "images" / "hello.yaml")
    from l4emu.boot import boot_complete
    system.run(timeout=60, until=lambda: boot_complete(system.sup))
    dump = system.kernel.dump()
    image = system.sup.loaded.image
    for task in image.tasks:
        named = {(row["object"], row["rights"]) for row in dump[task.name]
                 if row["type"] != "memory" and row["selector"] >= 0x10000}
        declared = {(cap.object, cap.rights.letters()) for cap in task.caps}
        assert named == declared, task.name
        env = {row["object"]: row["rights"] for row in dump[task.name] if row.get("selector", 0) < 0x10000}
        assert env == {task.name: "r", f"{task.name}.main": "rws", f"{task.name}.log": "rw",
                       f"{task.name}.parent": "rw", f"{task.name}.mem_alloc": "rw"}
    # Only the server may bind the ping gate; the client's copy is reduced.
    assert ("ping", CapRights.parse("svr").letters()) in {(r["object"], r["rights"]) for r in dump["server"]}
    assert ("ping", "rw") in {(r["object"], r["rights"]) for r in dump["client"]}


def test_cli_boot_exit_status_and_help():
    l4emu = [sys.executable, "-m", "l4emu.cli"]
    out = subprocess.run(l4emu + ["boot", str(ROOT / "images" / "hello.yaml"), "--timeout", "60"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "server answered through shared memory" in out.stdout
    for args in (["--help"], ["boot", "--help"]):
        help_ = subprocess.run(l4emu + args, capture_output=True, text=True, timeout=60)
        assert help_.returncode == 0
        assert "boot" in help_.stdout


def test_sigterm_shuts_every_task_down(tmp_path):
    image = tmp_path / "forever.yaml"
    image.write_text("""
name: forever
objects:
  svc: {type: gate}
tasks:
  server:
    program: testing.stall_server
    caps: {svc: "svc:svr"}
""")
    proc = subprocess.Popen([sys.executable, "-m", "l4emu.cli", "boot", str(image)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # wait until the task is up: its log line is the signal
        if "waiting for a call" in line:
            break
    children = _children(proc.pid)
    assert len(children) >= 3  # sigma0, moe, server
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, rest
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid), f"task process {pid} still running"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_trace_shows_every_ipc_and_the_summary_counts_them():
    out = subprocess.run([sys.executable, "-m", "l4emu.cli", "boot", str(ROOT / "images" / "hello.yaml"),
                          "--trace", "--timeout", "60"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    calls = [line for line in lines if line.startswith("ipc     | client -> server call proto 0x100 label 0x11")]
    assert len(calls) == 5  # the kernel-set label: gate label 0x10 | W of the client's cap
    assert sum(line.startswith("ipc     | server -> client reply status 0") for line in lines) == 5
    assert any(line.startswith("ipc     | irq kick -> server") for line in lines)
    header = next(line for line in lines if line.startswith("task ") and "denied" in line)
    summary = next(line for line in lines[lines.index(header):] if line.startswith("client "))
    at = header.index("denied")  # a right-aligned column: the value ends where the header ends
    assert summary[at:at + len("denied")].strip() == "0"  # no denials for the client
    assert not any("proto -" in line for line in lines)  # protocols by name (proto LOG, not proto -13)
    assert any("proto LOG" in line for line in lines)
