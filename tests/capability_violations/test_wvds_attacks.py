"""A compromised OEM gateway attacks the running WvdS system (docs/violations.md: V1-V21, H1, H2).

The attacker (``evil``) holds exactly the gateway's capabilities. It waits until the
system is in its steady state (the gateway has finished, est_service is enrolled),
then runs its attacks. Each test below is one attack: the exact error, the violation
record naming the rule, and that no other task's capability table changed.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from hil.est_ca import EstCa, serve
from hil.est_ca.binding import EstTarget, rebind
from kernel_model.events import Rule
from kernel_model.host.confinement import policy_for
from kernel_model.host.console import RecordingConsole
from kernel_model.host.images import load_image
from kernel_model.host.supervisor import Supervisor
from l4emu.boot import boot_complete
from systemlib import ROOT, System

ATTACKS = [
    "await:go",
    "call:0x50000", "call:0xfffffffffff00000", "call:0x2000",  # V1 forged selectors (0x2000: a root task's factory)
    "sweep:0,96",  # V2
    "raw:go,-11,0",  # V4 type confusion: a Task operation on an IRQ
    "raw:crypto_shm,0x4100,0",  # V4: a shared-memory call sent to a dataspace
    "raw:0x1000,-11,0",  # V5: Task::map into itself through a read-only task cap
    "raw:0x9000,-15,-11",  # V20: ask Moe's allocator for a Task
    "raw:0x9000,-15,0x4000,0x1000000",  # V21: a dataspace beyond its memory quota
    "reply",  # V19
    "raw:est,0x4100,0x7fffffff,{crypto_gate_id}",  # V3: object ids and lengths in a payload are only data
    "mapoff:crypto_shm,0x28000",  # V16: map past the end of a shared dataspace
    "crypto_import",  # V15 / import disabled by the image
    "crypto_destroy",  # V15: an operation outside the gateway's allowlist
    "net:127.0.0.1:{port}",  # V14 / H1: the EST CA directly, without the proxy
    "kill_parent", "read_mem:parent", "write_file:/tmp/l4emu-evil", "write_file:evil.txt",  # H1
    "fds",  # H2
    "send:0x8000,0x4002,0,0",  # issue 9: the kernel's exit notice, forged through the parent cap
    "say:ok\\rcrypto  | key 7 exported/\\x1b[2Kkernel  | all good",  # issue 9: console spoofing
    "flood:500", "sleep:1100",  # issue 9: a log flood (its own RESULT is among the dropped lines)
]


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wvds-attack")
    ca = EstCa(tmp / "est-ca")
    server = serve(ca, "127.0.0.1", 0)
    image = rebind(yaml.safe_load((ROOT / "images" / "wvds.yaml").read_text()), ROOT / "images",
                   EstTarget(endpoint=f"127.0.0.1:{server.port}", trust_anchor=ca.ca_cert_path))
    image["objects"]["go"] = {"type": "irq"}
    image["tasks"]["gateway"]["config"]["outbox"] = {"batch": 1, "max_wait_s": 1, "batches": 1}  # then it exits
    evil = copy.deepcopy(image["tasks"]["gateway"])
    evil.update(program="testing.adversary", log={"tag": "evil", "color": "r"},
                args=[a.format(port=server.port, crypto_gate_id=0x43000) for a in ATTACKS])
    evil.pop("config")
    evil["caps"] = {k: v for k, v in evil["caps"].items() if k not in ("readings", "ready")}
    evil["caps"]["go"] = "go:rws"
    image["tasks"]["evil"] = evil
    image["run"] = {"until": ["evil"]}
    path = tmp / "wvds-attack.yaml"
    path.write_text(yaml.safe_dump(image, sort_keys=False))
    console = RecordingConsole()
    sup = Supervisor(load_image(path), console, confinement=policy_for, run_dir=tmp / "run")
    system = System(sup, console)
    try:
        sup.start()
        system.run(timeout=120, until=lambda: boot_complete(sup) and system.exited("gateway") is not None)
        assert system.exited("gateway") == 0, console.text()
        before = sup.kernel.dump()
        violations_before = len(sup.kernel.violations)
        sup.inject_irq("go")
        system.run(timeout=120, until=lambda: system.exited("evil") is not None)
        assert system.exited("evil") == 0, console.text()
        after = sup.kernel.dump()  # before Moe exits and its whole subtree is revoked
        assert system.run(timeout=60) == 0, console.text()
        results = {r["command"]: r for r in system.results("evil")}
        yield system, (before, after), results, sup.kernel.violations[violations_before:], server
    finally:
        sup.shutdown()
        server.stop()


def denied(violations, selector=None, rule=None):
    return [v for v in violations if v.task == "evil" and (selector is None or v.selector == selector)
            and (rule is None or v.rule is rule)]


def test_no_other_task_table_changed(attack):
    system, (before, after), results, violations, _ = attack
    for task in ("crypto", "est", "netproxy", "sigma0"):
        assert after[task] == before[task], task


@pytest.mark.parametrize("command,selector", [("call:0x50000", 0x50000),
                                              ("call:0xfffffffffff00000", 0xfffffffffff00000),
                                              ("call:0x2000", 0x2000)])
def test_v1_forged_selector(attack, command, selector):
    _, _, results, violations, _ = attack
    assert results[command]["error"] == "ENOT_EXISTENT"
    records = denied(violations, selector, Rule.NO_CAPABILITY)  # the forged call (and the sweep's, if in range)
    assert records and {v.error for v in records} == {"L4_IPC_ENOT_EXISTENT"}


def test_v2_sweeping_selectors_finds_exactly_the_declared_caps(attack):
    system, (before, _after), results, _, _ = attack
    found = set(results["sweep:0,96"]["found"])
    held = {row["selector"] for row in before["evil"] if row["type"] != "memory"}
    assert found == held
    declared = system.sup.loaded.image.task("evil").caps
    assert len([s for s in found if s >= 0x10000]) == len(declared)


def test_v4_type_confusion(attack):
    _, _, results, violations, _ = attack
    assert results["raw:go,-11,0"]["status"] == -39  # -L4_EBADPROTO from the kernel
    assert [v.rule for v in denied(violations) if v.operation == "proto -11"] == [Rule.WRONG_OBJECT_TYPE]
    assert results["raw:crypto_shm,0x4100,0"]["status"] == -39  # Moe: a dataspace is not a service


def test_v5_no_rights_escalation_through_task_map(attack):
    _, _, results, violations, _ = attack
    assert results["raw:0x1000,-11,0"]["status"] == -1  # -L4_EPERM: the task cap is read-only
    assert denied(violations, 0x1000, Rule.MISSING_RIGHT)


def test_v20_no_privileged_objects(attack):
    _, _, results, _, _ = attack
    assert results["raw:0x9000,-15,-11"]["status"] == -39 and not results["raw:0x9000,-15,-11"]["got_cap"]


def test_v21_memory_quota(attack):
    _, _, results, _, _ = attack
    assert results["raw:0x9000,-15,0x4000,0x1000000"]["status"] == -12  # -L4_ENOMEM for this task only


def test_v3_an_object_id_in_a_payload_is_only_data(attack):
    _, _, results, _, _ = attack
    result = results["raw:est,0x4100,0x7fffffff,274432"]
    assert result["status"] == -1002 and not result["got_cap"]  # -L4_EMSGTOOLONG from est; no capability


def test_v16_no_mapping_past_the_end_of_a_dataspace(attack):
    _, _, results, _, _ = attack
    assert results["mapoff:crypto_shm,0x28000"]["status"] == -34 and not results["mapoff:crypto_shm,0x28000"]["mapped"]


def test_v19_reply_without_a_caller(attack):
    _, _, results, violations, _ = attack
    assert results["reply"]["error"] == "ENOT_EXISTENT"
    assert denied(violations, rule=Rule.REPLY_WITHOUT_CALLER)


def test_v15_operations_outside_the_image_policy(attack):
    _, _, results, _, _ = attack
    assert results["crypto_import"]["status"] == 0x41  # IMPORT_DISABLED: the image's config.json disables it
    assert results["crypto_destroy"]["status"] == 0x40  # POLICY_DENIED: not in the gateway's allowlist


def test_v14_h1_no_network_without_the_proxy(attack):
    _, _, results, _, server = attack
    result = results[f"net:127.0.0.1:{server.port}"]
    assert result["connected"] is False
    assert not any(r.client == "evil" for r in server.records)


def test_h1_host_escapes(attack):
    _, _, results, _, _ = attack
    assert results["kill_parent"]["killed"] is False
    assert results["read_mem:parent"]["read"] is False
    assert results["write_file:/tmp/l4emu-evil"]["written"] is False
    assert results["write_file:evil.txt"]["written"] is True  # its own work directory is writable
    assert not Path("/tmp/l4emu-evil").exists()


def test_h2_only_the_channel_and_no_secrets(attack):
    system, _, results, _, _ = attack
    fds = results["fds"]
    targets = {int(fd): target for fd, target in fds["targets"].items()}
    assert targets[3].startswith("socket:")
    assert targets[0] == targets[1] == targets[2] == "/dev/null"
    extra = {fd: t for fd, t in targets.items() if fd > 3}
    # only its mapped dataspaces, and the client ends of the direct channels the kernel granted it
    evil = next(t for t in system.kernel.tasks.values() if t.name == "evil")
    handed = {f"socket:[{ino}]" for ino in system.sup.directs.handed.get(evil.id, ())}
    assert all(t.startswith("/memfd:") or t in handed for t in extra.values()), extra
    assert fds["env"] == {} or set(fds["env"]) <= {"LANG", "PYTHONDONTWRITEBYTECODE", "LC_CTYPE"}


def test_every_denial_is_logged_and_counted(attack):
    system, _, _, violations, _ = attack
    logged = [line for line in system.console.lines if line.startswith("kernel  | DENIED evil")]
    assert len(logged) == len(denied(violations)) >= 6


def test_issue9_a_forged_exit_notice_is_ignored(attack):
    system, _, results, _, _ = attack
    assert results["send:0x8000,0x4002,0,0"]["error"] == "OK"  # Moe took it ...
    assert [line for line in system.lines("moe") if line.startswith("evil ")] == ["evil exited with status 0"]


def test_issue9_the_console_cannot_be_spoofed_or_flooded(attack):
    system, _, _, violations, _ = attack
    lines = system.console.lines
    assert "evil    | ok\\rcrypto  | key 7 exported" in lines and "evil    | \\e[2Kkernel  | all good" in lines
    assert not any(line.startswith(("crypto  | key 7", "kernel  | all good")) for line in lines)
    assert len([line for line in system.lines("evil") if line.startswith("flood ")]) < 500
    assert any(line.startswith("evil    ! [") and "dropped" in line for line in lines)
    assert denied(violations, rule=Rule.LOG_RATE)
