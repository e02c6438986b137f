"""``l4emu new-task NAME``: a task module, an image that boots it, and a test, from templates.

The scaffold boots as written: a server task that answers one protocol and a client that calls it,
so the integrator starts from a working pair of capabilities (a gate, with the server's ``svr`` and
the client's ``rw``) and a passing test. Nothing is overwritten: an existing file is an error.
"""
from __future__ import annotations

import re
from pathlib import Path

from kernel_model.host.images import PROJECT_ROOT

NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
RESERVED = {"runtime", "testing", "examples", "hello", "sensor", "crypto_service", "est_service", "netproxy",
            "oem_gateway"}

TASK = '''"""{name}: a server that answers {name}'s protocol, and a client that calls it (scaffolded by l4emu new-task).

Run as two tasks of images/{name}.yaml: ``{name}.task serve`` and ``{name}.task call``.
"""
from __future__ import annotations

PROTO = 0x200  #: {name}'s protocol label (user protocols are >= 0x100)
ECHO = 1  #: MR[0] opcode: answer MR[1] + 1
LABEL = 0x10  #: the label the server binds its gate with


def serve(env) -> int:
    gate = env.cap("{name}")
    if env.bind_gate(gate, LABEL) < 0:
        env.log("cannot bind the gate")
        return 1
    env.log("ready")
    msg = env.wait()
    while True:
        if not msg.ok:
            msg = env.wait()
            continue
        if msg.proto == PROTO and msg.has_words(2) and msg.word(0) == ECHO:
            msg = env.reply_and_wait(0, msg.word(1) + 1)
        else:
            msg = env.reply_and_wait(-22)  # -L4_EINVAL: not our protocol


def call(env) -> int:
    reply = env.call(env.cap("{name}"), PROTO, ECHO, 41, timeout_us=10_000_000)
    if not reply.ok or reply.status < 0:
        env.log(f"call failed: {{reply.error.name}} status {{reply.status}}")
        return 1
    env.log(f"answer: {{reply.word(0)}}")
    return 0 if reply.word(0) == 42 else 1


def main(env) -> int:
    return serve(env) if env.args[:1] == ["serve"] else call(env)
'''

IMAGE = '''# {name}: scaffolded by `l4emu new-task {name}`. Boot: l4emu boot images/{name}.yaml
name: {image}
run:
  until: [{client}]
objects:
  {name}: {{type: gate}}
tasks:
  {server}:
    program: {name}.task
    args: [serve]
    log: {{tag: {server_tag}, color: g}}
    memory: 256KiB
    caps: {{{name}: "{name}:svr"}}
  {client}:
    program: {name}.task
    args: [call]
    log: {{tag: {client_tag}, color: c}}
    memory: 256KiB
    caps: {{{name}: "{name}:rw"}}
'''

TEST = '''"""{name} boots: the client's call is answered (scaffolded by l4emu new-task; grow it with the task)."""
from __future__ import annotations

from systemlib import ROOT


def test_{name}_boots_and_answers(boot):
    system = boot(ROOT / "images" / "{name}.yaml")
    assert system.run(timeout=60) == 0, system.console.text()
    assert system.lines("{client_tag}") == ["answer: 42"]
    assert system.kernel.violations == []
'''


class ScaffoldError(Exception):
    pass


def scaffold(name: str, root: Path = PROJECT_ROOT) -> list[Path]:
    """Write the three files (and tasks/NAME/__init__.py); return their paths. Raises ScaffoldError."""
    if not NAME.match(name):
        raise ScaffoldError(f"task name {name!r}: expected a Python identifier matching {NAME.pattern}")
    if name in RESERVED:
        raise ScaffoldError(f"{name!r} is a package of the project already")
    server, client = f"{name[:12]}_srv", f"{name[:12]}_cli"
    fields = dict(name=name, image=name.replace("_", "-"), server=server, client=client,
                  server_tag=f"{name[:4]}-srv", client_tag=f"{name[:4]}-cli")
    files = {
        root / "tasks" / name / "__init__.py": "",
        root / "tasks" / name / "task.py": TASK.format(**fields),
        root / "images" / f"{name}.yaml": IMAGE.format(**fields),
        root / "tests" / "tasks" / name / f"test_{name}.py": TEST.format(**fields),
    }
    existing = [p for p in files if p.exists()]
    if existing:
        raise ScaffoldError(f"not overwriting {', '.join(str(p) for p in existing)}")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)
