"""kernel_model.logs: escaping and the per-log rate window, on an injected clock (µs)."""
from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from kernel_model.logs import MAX_LINE, WINDOW_US, LogBudget, LogStream, original, printable


def test_printable_escapes_what_a_terminal_acts_on_and_keeps_the_rest():
    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    assert printable("a\rb\tc\x1bd\\e") == "a\\rb\\tc\\ed\\\\e"
    assert printable("\x00\x7f\x9b\u202e\u2028") == "\\x00\\x7f\\x9b\\u202e\\u2028"


@given(st.text())
def test_printable_text_is_safe_and_tools_get_back_exactly_what_the_task_wrote(text):
    shown = printable(text)
    assert not any(unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" for c in shown)
    assert original(shown) == text


def test_lines_wait_for_their_end_and_an_endless_line_is_cut():
    s = LogStream(LogBudget())
    assert s.write(b"par", 0)[0] == [] and s.write(b"tial\nnext", 0)[0] == ["partial"]
    lines, _, _ = s.write(b"x" * (MAX_LINE + 10), 0)
    assert lines == ["next" + "x" * (MAX_LINE + 10)] and s.partial == b""


def test_the_window_counts_lines_and_reports_drops_when_it_rolls():
    s = LogStream(LogBudget(lines_per_s=2))
    lines, notice, first = s.write(b"1\n2\n3\n4\n", 10)
    assert lines == ["1", "2"] and notice is None and first and s.dropped == 2
    assert s.window_end() == 10 + WINDOW_US
    assert s.write(b"5\n", 10 + WINDOW_US - 1)[0] == [] and s.dropped == 3
    lines, notice, first = s.write(b"6\n", 10 + WINDOW_US)
    assert lines == ["6"] and notice.startswith("[3 line(s) dropped") and not first
    assert s.window_end() is None  # nothing dropped in the new window
