"""Moe's supervision state in the boot view: the summary's restart column and --trace (l4emu/live.py)."""
from __future__ import annotations

import json

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
    assert sink.restart_cell("crypto", "on-failure") == "restarting in 0.5 s"
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
