"""Console spoofing and log floods (issue 9, attack 5; budget "log lines/bytes per second").

The attack: a log line with ``\\r`` and ANSI escapes printed as another task's tagged line
(``crypto  | key 7 exported``) or as a kernel line. Now a task's log is a kernel log object
carrying its tag; the kernel escapes everything a terminal would act on and the host prints
the tag itself. A task logging faster than its budget loses the excess and the console says
how many lines were dropped. Time is the kernel's injected clock.
"""
from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capabilities.image import ImageError, parse_image
from capabilities.rights import CapRights
from kernel_model.abi import EnvSlot, Err, FactoryOp, IpcFlags, LogOp, MsgTag, Proto, sel
from kernel_model.events import ConsoleLine, Rule
from kernel_model.host.console import strip_ansi, tagged_line
from kernel_model.logs import LogBudget, printable
from kernel_model.objects import Factory, KernelLog
from kernel_model.wire import Invocation
from kernel_world import RWS, World, call, words

ATTACKS = [
    "ok\rcrypto  | key 7 exported",
    "\x1b[2K\x1b[1Gkernel  | system stopped with status 0",
    "\x1b]0;owned\x07title",
    "\x9b2Kc1-csi",
    "right\u202eto-left",
    "sep\u2028arator",
    "nul\x00del\x7f",
    "back\bspace",
]


def log_world(lines_per_s: int = 0, bytes_per_s: int = 0):
    w = World()
    gw = w.task("gateway")
    w.give(gw, EnvSlot.LOG, KernelLog(name="gw.log", tag="gw", color="y", budget=LogBudget(lines_per_s, bytes_per_s)),
           CapRights.R | CapRights.W)
    return w, gw


def write(w: World, task, text: str, flags=IpcFlags.SEND):
    raw = text.encode()
    data = words(LogOp.WRITE, len(raw)) + raw + bytes(-len(raw) % 8)
    w.do(task, Invocation(flags, sel(EnvSlot.LOG), MsgTag(Proto.LOG, min(len(data) // 8, 63)), data))
    return [e for e in w.effects if isinstance(e, ConsoleLine)]


def test_every_attack_prints_as_one_line_of_the_attackers_own_tag():
    w, gw = log_world()
    for attack in ATTACKS:
        out = write(w, gw, attack + "\n")
        assert len(out) == 1 and out[0].tag == "gw" and not out[0].notice
        line = tagged_line(out[0].tag, out[0].color, out[0].text)
        assert strip_ansi(line).startswith("gw      | ")
        body = line.split("| ", 1)[1]
        assert body.isprintable() and "\x1b" not in body  # nothing a terminal would act on
    assert printable(ATTACKS[0]) == "ok\\rcrypto  | key 7 exported"  # shown, escaped
    assert printable(ATTACKS[1]).startswith("\\e[2K")


def test_a_newline_starts_a_new_line_of_the_same_tag_and_partial_lines_wait():
    w, gw = log_world()
    out = write(w, gw, "one\ncrypto  | two\nthr")
    assert [(c.tag, c.text) for c in out] == [("gw", "one"), ("gw", "crypto  | two")]
    assert [(c.tag, c.text) for c in write(w, gw, "ee\n")] == [("gw", "three")]


def test_the_kernel_console_tags_lines_with_the_writers_name():
    w = World()
    moe = w.task("moe")
    w.give(moe, EnvSlot.LOG, w.k.console, RWS)
    out = write(w, moe, "gateway exited with status 0\n")
    assert [(c.tag, c.text) for c in out] == [("moe", "gateway exited with status 0")]


@given(st.text(max_size=200))
def test_printable_leaves_no_control_format_or_separator_character(text):
    shown = printable(text)
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") for ch in shown)


def test_a_log_flood_is_cut_at_the_budget_and_the_drop_is_announced():
    w, gw = log_world(lines_per_s=5)
    out = write(w, gw, "".join(f"flood {i}\n" for i in range(20)), IpcFlags.CALL)
    assert [c.text for c in out] == [f"flood {i}" for i in range(5)]
    assert w.last("gateway").tag.label == -Err.EAGAIN  # a call learns it was over budget
    assert [v.rule for v in w.k.violations] == [Rule.LOG_RATE]  # one violation per second, not per line
    assert write(w, gw, "still flooding\n", IpcFlags.CALL) == [] and len(w.k.violations) == 1
    assert w.k.next_deadline() == 1_000_000  # the host wakes up to print the notice
    w.tick(999_999)
    assert not [e for e in w.effects if isinstance(e, ConsoleLine)]
    w.tick(1)
    notices = [e for e in w.effects if isinstance(e, ConsoleLine)]
    assert len(notices) == 1 and notices[0].notice and notices[0].tag == "gw"
    assert notices[0].text.startswith("[16 line(s) dropped")
    assert strip_ansi(tagged_line("gw", "y", notices[0].text, notice=True)).startswith("gw      ! [16 line(s)")
    out = write(w, gw, "calm again\n", IpcFlags.CALL)
    assert [c.text for c in out] == ["calm again"] and w.last("gateway").tag.label == 0


def test_the_byte_budget_counts_too():
    w, gw = log_world(bytes_per_s=100)
    out = write(w, gw, "x" * 60 + "\n" + "y" * 60 + "\n")
    assert [len(c.text) for c in out] == [60]
    assert w.k.violations[-1].rule is Rule.LOG_RATE


def test_moe_creates_each_tasks_log_with_its_tag_colour_and_budget():
    w = World()
    moe = w.task("moe")
    w.give(moe, 16, w.k.root_factory, RWS)  # the kernel factory: only the root tasks hold it
    res = w.do(moe, call(sel(16), Proto.FACTORY, words(FactoryOp.LOG, ord("G"), 7, 900) + b"crypto\0\0",
                         rcv_obj=sel(20)))
    assert res.tag.label == 0
    log = w.k.lookup(moe, sel(20)).obj
    assert (log.tag, log.color, log.budget) == ("crypto", "G", LogBudget(7, 900))


SPOOF = """
name: spoof
run:
  until: [evil]
tasks:
  evil:
    program: testing.adversary
    log: {tag: evil, color: r}
    limits: {log_lines: 10}
    args: ["say:ok\\\\rcrypto  | key 7 exported", "say:\\\\x1b[2Kkernel  | all good", "flood:50", "sleep:1100"]
"""


def test_a_booted_attacker_can_neither_spoof_a_line_nor_flood_the_console(boot):
    system = boot(SPOOF)
    assert system.run(timeout=60) == 0, system.console.text()
    text = system.console.text()
    assert "\r" not in text and "\x1b" not in text
    assert "evil    | ok\\rcrypto  | key 7 exported" in system.console.lines
    assert not any(line.startswith(("crypto", "kernel  | all good")) for line in system.console.lines)
    flood = [line for line in system.lines("evil") if line.startswith("flood ")]
    assert len(flood) <= 10
    assert any(line.startswith("evil    ! [") and "line(s) dropped" in line for line in system.console.lines)
    assert any(v.rule is Rule.LOG_RATE and v.task == "evil" for v in system.kernel.violations)


def test_only_the_kernel_factory_makes_logs_so_no_task_picks_a_tag():
    w = World()
    t = w.task("t")
    w.give(t, 16, Factory(name="fab", quota=5), RWS)  # a task's own factory (not the root task's)
    res = w.do(t, call(sel(16), Proto.FACTORY, words(FactoryOp.LOG, ord("w"), 0, 0) + b"crypto\0\0", rcv_obj=sel(20)))
    assert res.tag.label == -Err.EPERM and w.k.lookup(t, sel(20)) is None
    assert w.k.violations[-1].rule is Rule.MISSING_RIGHT


@pytest.mark.parametrize("task", ["a:\n    program: hello.ping_client\n    log: {tag: kernel}",
                                  "moe:\n    program: hello.ping_client",
                                  "a:\n    program: hello.ping_client\n    log: {tag: \"x\\e[0m\"}"])
def test_an_image_cannot_give_a_task_the_consoles_own_tags(task):
    with pytest.raises(ImageError, match="reserved"):
        parse_image(f"name: t\ntasks:\n  {task}\n", "t.yaml")
