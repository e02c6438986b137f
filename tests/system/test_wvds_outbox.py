"""WvdS end to end: the sensor feeds the gateway, which seals signed batches that verify-outbox accepts.

Boots images/wvds.yaml as shipped (plus a local EST CA and a bounded number of batches), once per
module; the live view's rows and the JSON summary come from the same run.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from hil.est_ca import EstCa, serve
from hil.est_ca.binding import EstTarget, rebind
from kernel_model.host.confinement import policy_for
from kernel_model.host.images import load_image
from kernel_model.host.supervisor import Supervisor
from l4emu.live import ViewSink, render_live, snapshot
from l4emu.verify import verify_outbox
from systemlib import ROOT, System

BATCHES = 3


@pytest.fixture(scope="module")
def wvds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wvds-outbox")
    ca = EstCa(tmp / "est-ca")
    server = serve(ca, "127.0.0.1", 0)
    image = rebind(yaml.safe_load((ROOT / "images" / "wvds.yaml").read_text()), ROOT / "images",
                   EstTarget(endpoint=f"127.0.0.1:{server.port}", trust_anchor=ca.ca_cert_path))
    image["tasks"]["sensor"]["config"]["rate_hz"] = 50
    image["tasks"]["gateway"]["config"]["outbox"] = {"batch": 4, "max_wait_s": 2, "batches": BATCHES}
    path = tmp / "wvds.yaml"
    path.write_text(yaml.safe_dump(image, sort_keys=False))
    loaded = load_image(path)
    sink = ViewSink(Console(file=io.StringIO()), {t.log.tag: t.name for t in loaded.image.tasks})
    sup = Supervisor(loaded, sink, confinement=policy_for, run_dir=tmp / "run")
    sup.kernel.trace = True
    try:
        sup.start()
        system = System(sup, sink)
        system.run(timeout=180, until=lambda: system.exited("gateway") is not None)
        rows = snapshot(sup, sink)
        yield system, sink, rows, tmp, ca
    finally:
        sup.shutdown()
        server.stop()


def exported(tmp: Path) -> Path:
    """The gateway's work-dir files as the host sees them (a copy out of its filesystem image)."""
    from kernel_model.host.workdirs import export_files
    dest = tmp / "gateway-files"
    shutil.rmtree(dest, ignore_errors=True)
    return export_files(tmp / "run" / "gateway", dest)


def test_gateway_seals_the_sensors_readings(wvds):
    system, sink, _, tmp, _ = wvds
    assert system.exited("gateway") == 0, system.console.text()
    log = system.lines("gateway")
    assert sum(line.startswith("batch ") and "readings sealed and signed" in line for line in log) == BATCHES
    assert any(line.startswith("sampling channel 0 at 50 Hz") for line in system.lines("sensor"))
    files = sorted((exported(tmp) / "outbox").glob("batch-*.json"))
    assert len(files) == BATCHES
    assert system.kernel.violations == []


def test_verify_outbox_accepts_the_real_outbox_and_rejects_an_edit(wvds):
    _, _, _, tmp, ca = wvds
    box = tmp / "run" / "gateway" / "outbox"  # inside the gateway's work-dir image: verify-outbox reads a copy
    out = Console(file=io.StringIO(), width=200)
    assert verify_outbox(box, out, ca.ca_cert_path) == 0, out.file.getvalue()
    box = exported(tmp) / "outbox"
    assert f"{BATCHES} records, 0 failed" in out.file.getvalue()
    copy = tmp / "tampered"
    copy.mkdir()
    for f in box.glob("batch-*.json"):
        (copy / f.name).write_bytes(f.read_bytes())
    first = sorted(copy.glob("batch-*.json"))[0]
    record = json.loads(first.read_text())
    record["readings"] += 1
    first.write_text(json.dumps(record))
    out = Console(file=io.StringIO(), width=200)
    assert verify_outbox(copy, out, ca.ca_cert_path) == 1
    assert "signature does not verify" in out.file.getvalue()


def test_live_view_rows_show_every_task_and_the_services(wvds):
    """The live view rendered to a recording console: one row per task with its numbers."""
    system, sink, rows, _, _ = wvds
    by_name = {r.name: r for r in rows}
    assert set(by_name) == {"sigma0", "moe", "crypto", "netproxy", "est", "gateway", "sensor"}
    assert by_name["gateway"].ipcs > 0 and by_name["crypto"].served > 0 and by_name["sensor"].ipcs > 0
    assert by_name["gateway"].denied == 0 and by_name["gateway"].exits == (0,)
    assert by_name["crypto"].state == "running" and by_name["crypto"].pid
    assert by_name["crypto"].memory_quota == 1 << 20
    out = Console(file=io.StringIO(), width=160, record=True)
    out.print(render_live(rows, sink, {t.name: t.log.color for t in system.sup.loaded.image.tasks}))
    text = out.export_text()
    for name in by_name:
        assert any(line.split()[:1] == [name] for line in text.splitlines()), (name, text)
    crypto_line = next(line for line in text.splitlines() if line.startswith("crypto service"))
    assert "SUCCESS" in crypto_line
    assert "device certificate: VALID, expires" in text
    assert f"outbox: {BATCHES} sealed batches" in text
