"""``l4emu boot`` and direct channels: on as the image says without --trace (no trace events at all, the view
counts served IPCs from the kernel's counters), off for the whole system under --trace."""
from __future__ import annotations

import io
import json
import re

import pytest

IMAGE = """
name: boot-direct
run: {until: [client]}
objects:
  svc: {type: gate, direct: true}
tasks:
  server:
    program: testing.echo_server
    caps: {svc: "svc:svr"}
  client:
    program: testing.direct_bench_client
    args: ["20", "5"]
    caps: {svc: "svc:rw"}
"""


@pytest.mark.parametrize("trace", [False, True])
def test_trace_turns_direct_channels_off(tmp_path, monkeypatch, trace):
    from rich.console import Console

    from l4emu.boot import boot_image
    monkeypatch.delenv("L4EMU_DIRECT", raising=False)
    image = tmp_path / "d.yaml"
    image.write_text(IMAGE)
    buf = io.StringIO()
    code = boot_image(image, console=Console(file=buf, width=200, color_system=None), timeout_s=120, live=False,
                      trace=trace, run_dir=tmp_path / "run")
    text = buf.getvalue()
    assert code == 0, text
    bench = json.loads(text.split("BENCH ", 1)[1].splitlines()[0])
    assert bench["direct_calls"] == (0 if trace else 100), text
    assert ("-> server call proto" in text) is trace  # trace lines only under --trace
    summary = text[text.rindex("peak memory / quota"):]
    server = next(line for line in summary.splitlines() if line.startswith("server"))
    served = int(re.split(r"\s+", server)[7])
    assert served == (105 if trace else 1), server  # the kernel's count: direct traffic is not in it
