"""Hostile peers on a kernel-granted direct channel: garbage, oversized and fd-carrying frames, a client that
never reads its replies, a server that replies garbage. Only that channel closes (its side falls back to the
kernel path); no exception in the other task; the kernel and the other tasks are unaffected."""
from __future__ import annotations

import pytest

from kernel_model.events import Rule


@pytest.fixture(autouse=True)
def _channels_as_the_image_says(monkeypatch):
    """These tests are about direct channels: the suite-wide switch (L4EMU_DIRECT) does not apply."""
    monkeypatch.delenv("L4EMU_DIRECT", raising=False)

IMAGE = """
name: direct-hostile
run: {{until: [{until}]}}
objects:
  svc: {{type: gate, direct: true}}
tasks:
  server:
    program: {server}
    args: [{server_args}]
    caps: {{svc: "svc:svr"}}
  hostile:
    program: testing.direct_hostile
    args: [{role}]
    caps: {{svc: "svc:rw"}}
  honest:
    program: testing.direct_bench_client
    args: ["50", "20"]
    caps: {{svc: "svc:rw"}}
"""


def _boot(boot, role: str, server: str = "testing.echo_server", server_args: str = "", until="hostile, honest"):
    system = boot(IMAGE.format(role=role, server=server, server_args=server_args, until=until))
    system.run(timeout=120, until=lambda: system.exited("hostile") is not None and system.exited("honest") is not None)
    text = system.console.text()
    assert system.exited("hostile") == 0 and system.exited("honest") == 0, text
    assert not [v for v in system.kernel.violations if v.rule is Rule.KERNEL_BUG], text
    assert "request failed" not in text and "Traceback" not in text, text
    (bench,) = [line for line in system.lines("honest") if line.startswith("BENCH ")]
    assert '"direct_calls": 250' in bench, bench  # the honest client's channel was never disturbed
    return system


def test_a_client_writing_garbage_closes_only_its_own_channel(boot):
    system = _boot(boot, "garbage")
    (result,) = system.results("hostile")
    assert {k: v for k, v in result.items() if k != "after"} == {
        "short": "closed", "oversized": "closed", "words": "closed", "flags": "closed", "label": "closed",
        "fd": "answered"}  # the smuggled fd never reaches the server (no ancillary space): a plain request
    assert result["after"][0] == "OK"
    assert system.sup.procs[system.kernel.task_by_name("server").id].status is None  # the server lives on


def test_a_client_that_never_reads_its_replies_loses_its_channel_not_the_server(boot):
    system = _boot(boot, "noread")
    (result,) = system.results("hostile")
    assert result["outcome"] in ("BrokenPipeError", "ConnectionResetError"), result
    assert result["after"] == "OK"


def test_a_server_replying_garbage_costs_the_client_only_that_call(boot):
    image = IMAGE.format(role="count", server="testing.direct_hostile", server_args="liar", until="hostile")
    system = boot(image[:image.index("  honest:")])  # the liar lies to whoever comes first: only one client
    system.run(timeout=120, until=lambda: system.exited("hostile") is not None)
    text = system.console.text()
    assert system.exited("hostile") == 0, text
    assert not [v for v in system.kernel.violations if v.rule is Rule.KERNEL_BUG], text
    (result,) = system.results("hostile")
    outcomes = result["outcomes"]
    # each lie ends that call as a broken partner would and drops the channel; the next call goes through the
    # kernel (and gets a fresh channel); every other answer is right
    assert outcomes.count("ENOT_EXISTENT") == 3 and outcomes.count("OK") == 17, outcomes
