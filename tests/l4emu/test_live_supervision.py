"""Moe's supervision state in the boot view: the summary's restart column and --trace (l4emu/live.py)."""
from __future__ import annotations

import json
import re

from l4emu.live import LiveSink


def moe_metric(state: dict) -> str:
    return "moe     | METRIC " + json.dumps({"supervision": state})


def test_the_restart_column_counts_down_to_the_next_attempt_and_says_when_moe_gave_up():
    sink = LiveSink({"crypto": "crypto"}, show_trace=True)
    now = [100.0]
    sink.clock = lambda: now[0]
    assert sink.restart_cell("crypto", "on-failure") == "on-failure"  # before Moe said anything: the policy
    sink.log_line(moe_metric({"crypto": {"state": "restarting", "policy": "on-failure", "generation": 2,
                                         "restarts": 1, "next_attempt_s": 1.5, "gave_up": None}}))
    now[0] = 101.0
    assert sink.restart_cell("crypto", "on-failure") == "restarting in 500 ms"
    now[0] = 100.25
    assert sink.restart_cell("crypto", "on-failure") == "restarting in 1.2 s"
    now[0] = 102.0
    assert sink.restart_cell("crypto", "on-failure") == "restarting now"
    sink.log_line(moe_metric({"crypto": {"state": "gave up", "policy": "on-failure", "generation": 6, "restarts": 5,
                                         "next_attempt_s": None, "gave_up": "5 restarts within 60 s"}}))
    assert sink.restart_cell("crypto", "on-failure") == "gave up"
    # --trace: each change, with the reason, generation and restart count; not as a log line
    assert sink.lines[-1] == ("ipc     | supervision: crypto gave up (5 restarts within 60 s), generation 6, "
                              "restarts 5 (on-failure)")
    assert not [line for line in sink.lines if "METRIC" in line]  # data for the view, not a log line


def test_only_moe_reports_supervision():
    sink = LiveSink({"evil": "evil"})
    sink.log_line("evil    | METRIC " + json.dumps({"supervision": {"crypto": {"state": "gave up"}}}))
    assert sink.supervision == {}


CRASHY = """
name: crashy
run: {until: [client]}
objects:
  svc: {type: gate}
tasks:
  server:
    program: testing.adversary
    args: ["exit:3"]
    restart: {policy: on-failure, backoff: {initial: 10ms, max: 40ms}, intensity: {restarts: 2, period: 60s}}
    caps: {svc: svc:svr}
  client:
    program: testing.patient_client
    args: [svc]
    caps: {svc: svc:rw}
"""


def test_a_boot_shows_moes_decisions_in_the_summary_and_the_trace(tmp_path):
    import io

    from rich.console import Console

    from l4emu.boot import boot_image
    image = tmp_path / "crashy.yaml"
    image.write_text(CRASHY)
    buf = io.StringIO()
    code = boot_image(image, console=Console(file=buf, width=200, color_system=None), timeout_s=120, live=False,
                      trace=True, run_dir=tmp_path / "run")
    text = buf.getvalue()
    assert code == 0, text
    # --trace: the first restart is due 10 ms after the exit (less by the time Moe reports it)
    assert re.search(r"supervision: server restarting (in \d+ ms|now), generation 1, restarts 0", text), text
    assert "supervision: server gave up (2 restarts within 60 s, its intensity limit), generation 3" in text
    summary = text[text.rindex("peak memory / quota"):]
    server = next(line for line in summary.splitlines() if line.startswith("server"))
    assert "gave up" in server and " 3 " in server  # generation 3 (the kernel's), restarts 2
    assert (tmp_path / "run" / "server").is_dir()
