"""l4emu boot's output: the live view on a terminal, plain lines otherwise, --duration, --json-summary."""
from __future__ import annotations

import io
import json
import subprocess
import sys

from rich.console import Console

from l4emu.boot import boot_image
from systemlib import ROOT

FOREVER = """
name: forever
objects:
  readings: {type: dataspace, size: 4KiB}
  ready: {type: irq}
tasks:
  server:
    program: sensor.task
    config: {rate_hz: 20}
    caps: {readings: "readings:rw", ready: "ready:rs"}
  idle:
    program: hello.ping_server
    memory: 128KiB
"""


def test_live_view_on_a_terminal_shows_a_row_per_task(tmp_path):
    buf = io.StringIO()
    out = Console(file=buf, force_terminal=True, width=160, color_system=None)
    code = boot_image(ROOT / "images" / "hello.yaml", console=out, timeout_s=60, live=True)
    assert code == 0
    text = buf.getvalue()
    # the live region was drawn (cursor movement) and the final summary names every task
    assert "\x1b[" in text
    summary = text[text.rindex("peak memory / quota"):]
    for name in ("sigma0", "moe", "server", "client"):
        assert f"{name} " in summary or f"{name}│" in summary, (name, summary)
    assert "exited 0" in summary


def test_duration_stops_a_system_that_runs_forever_and_writes_the_summary(tmp_path):
    image = tmp_path / "forever.yaml"
    image.write_text(FOREVER)
    summary = tmp_path / "summary.json"
    out = subprocess.run([sys.executable, "-m", "l4emu.cli", "boot", str(image), "--duration", "2",
                          "--json-summary", str(summary), "--headless"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "runs until Ctrl-C or --duration 2 s" in out.stdout
    assert "--duration 2 s reached: stopping the system" in out.stdout
    data = json.loads(summary.read_text())
    assert data["exit_status"] == 0 and data["image"] == "forever"
    rows = {t["name"]: t for t in data["tasks"]}
    assert set(rows) == {"sigma0", "moe", "server", "idle"}  # including a task that never made a call
    assert rows["idle"]["memory_quota"] == 128 * 1024 and rows["server"]["state"] == "running"
    assert rows["server"]["ipcs"] > 0 and rows["server"]["denied"] == 0


def test_timeout_is_still_a_failure(tmp_path):
    image = tmp_path / "forever.yaml"
    image.write_text(FOREVER)
    out = Console(file=io.StringIO(), width=200)
    assert boot_image(image, console=out, timeout_s=1) == 124


def test_ctrl_c_stops_a_forever_system_with_a_summary(tmp_path):
    import signal
    image = tmp_path / "forever.yaml"
    image.write_text(FOREVER)
    proc = subprocess.Popen([sys.executable, "-m", "l4emu.cli", "boot", str(image), "--headless"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "sampling channel 0" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "SIGINT: shutting down" in rest and "peak memory / quota" in rest


def test_boot_with_est_ca_reads_modules_after_the_ca_made_them(tmp_path, monkeypatch):
    """A fresh clone: the trust anchor module appears only when the EST CA first starts (make boot)."""
    import contextlib

    import l4emu.boot as boot_mod
    ta = tmp_path / "var" / "ca.crt"

    @contextlib.contextmanager
    def fake_ca(path, est_ca, target, sink):  # the CA makes its trust anchor, the image is unchanged
        ta.parent.mkdir()
        ta.write_text("trust anchor")
        yield path

    monkeypatch.setattr(boot_mod, "start_est", fake_ca)
    image = tmp_path / "i.yaml"
    image.write_text((ROOT / "images" / "hello.yaml").read_text()
                     .replace("greeting: hello/greeting.txt",
                              f"greeting: {ROOT}/images/hello/greeting.txt\n  ta: var/ca.crt"))
    out = Console(file=io.StringIO(), width=200)
    assert boot_image(image, console=out, timeout_s=60, est_ca="127.0.0.1:1") == 0, out.file.getvalue()


def test_a_dumb_terminal_gets_plain_lines(tmp_path):
    """TERM=dumb (the HIL board's serial console): no live view, every task line kept."""
    buf = io.StringIO()
    out = Console(file=buf, force_terminal=True, width=160, color_system=None, _environ={"TERM": "dumb"})
    assert boot_image(ROOT / "images" / "hello.yaml", console=out, timeout_s=60) == 0
    text = buf.getvalue()
    assert "client  | 5 calls answered" in text and "\x1b[" not in text
    assert "peak memory / quota" in text
