"""The documentation's examples are the tested code: README.md and docs/integrator.md.

A fenced block right after ``<!-- file: PATH -->`` must be exactly that file of the repository,
and the images among those files boot to exit status 0 here. Every ``l4emu ...`` command line
in a ``sh`` block parses with the real CLI parser.
"""
from __future__ import annotations

import re
import shlex

import pytest
import yaml

from systemlib import ROOT

DOCS = [ROOT / "README.md", ROOT / "docs" / "integrator.md"]
BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\s*\n```[a-z]*\n(?P<body>.*?)```", re.S)


def fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    out: list[tuple[str, str]] = []
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                out.append((lang, "".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return out


def shell_blocks(text: str) -> list[str]:
    return [body for lang, body in fenced(text) if lang in ("sh", "")]


def blocks():
    for doc in DOCS:
        for m in BLOCK.finditer(doc.read_text()):
            yield pytest.param(doc, m.group("path"), m.group("body"), id=f"{doc.name}:{m.group('path')}")


@pytest.mark.parametrize("doc,path,body", list(blocks()))
def test_a_documented_file_is_the_file(doc, path, body):
    assert (ROOT / path).read_text() == body, f"{doc.name} shows {path} differently from the repository"


def test_the_docs_show_the_examples():
    names = {p.values[1] for p in blocks()}
    assert {"tasks/examples/first_task.py", "images/examples/first_task.yaml"} <= names  # README
    assert {"tasks/examples/crypto_and_est.py", "images/examples/crypto_and_est.yaml"} <= names  # integrator.md


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first = shell_blocks(text)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first[:2]] == ["make boot", "make test"]


def test_documented_command_lines_parse():
    from l4emu.cli import PASS_THROUGH, build_parser
    parser = build_parser()
    seen = 0
    for doc in DOCS:
        for body in shell_blocks(doc.read_text()):
            for line in body.splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    if not words or words[0] != "l4emu" or len(words) < 2 or words[1] in PASS_THROUGH:
                        continue
                    if "--help" in words or "-h" in words:
                        continue
                    parser.parse_args(words[1:])  # exits (fails the test) on a bad documented command
                    seen += 1
    assert seen >= 5


def test_readme_task_example_boots_and_prints_what_it_says(boot):
    system = boot(ROOT / "images" / "examples" / "first_task.yaml")
    assert system.run(timeout=60) == 0, system.console.text()
    assert system.lines("client") == ["ping 42 -> 43", "answer: REQUEST"]


def test_integrator_crypto_and_est_example_boots(boot, tmp_path):
    from hil.est_ca import EstCa, serve
    from hil.est_ca.binding import EstTarget, rebind
    ca = EstCa(tmp_path / "est-ca")
    server = serve(ca, "127.0.0.1", 0)
    try:
        base = ROOT / "images" / "examples"
        image = rebind(yaml.safe_load((base / "crypto_and_est.yaml").read_text()), base,
                       EstTarget(endpoint=f"127.0.0.1:{server.port}", trust_anchor=ca.ca_cert_path))
        path = tmp_path / "example.yaml"
        path.write_text(yaml.safe_dump(image, sort_keys=False))
        system = boot(path)
        assert system.run(timeout=180) == 0, system.console.text()
        log = system.lines("app")
        assert log[0] == "AES-256-GCM round trip: 21.5 C"
        assert log[1] == "ML-DSA-65 signature of 3309 bytes verifies: True"
        assert log[2].startswith("device certificate for CN=example-0001,O=Integrator, valid until ")
    finally:
        server.stop()


def test_integrator_guide_covers_every_schema_key_right_and_rule():
    from capabilities.image import COLORS, OBJECT_KEYS, RESERVED_CAPS, RESTART_POLICIES, TASK_KEYS, TOP_KEYS
    from capabilities.rights import _LETTERS
    from kernel_model.events import Rule
    text = (ROOT / "docs" / "integrator.md").read_text()
    for key in TOP_KEYS | TASK_KEYS | {k for keys in OBJECT_KEYS.values() for k in keys} | set(OBJECT_KEYS):
        assert f"`{key}`" in text, key
    for letter in list(_LETTERS) + ["svr"]:
        assert f"| `{letter}` |" in text, letter
    for name in RESTART_POLICIES + RESERVED_CAPS:
        assert f"`{name}`" in text, name
    assert f"`{COLORS}`" in text
    for rule in Rule:
        assert f"| `{rule.value}` |" in text, rule


def test_docs_say_what_is_true():
    """Found by a new user: the README never mentioned var/, claimed fd 2 is a console pipe; docs/hil.md said
    `l4emu hil` was not wired into the CLI."""
    readme = (ROOT / "README.md").read_text()
    assert "var/est-ca/" in readme and "var/run/<image>/<task>/" in readme and "`make clean` deletes `var/`" in readme
    assert "fd 2 (a write-only pipe" not in readme and "/dev/null on fds 0-2" in readme
    assert "docs/integrator.md" in readme
    hil = (ROOT / "docs" / "hil.md").read_text()
    assert "Until `l4emu hil` is wired" not in hil and "`l4emu hil` is the CLI's command" in hil
    makefile = (ROOT / "Makefile").read_text()
    assert "rm -rf .venv .pytest_cache var" in makefile  # what the README says make clean does


def test_make_boot_runs_the_gateway_until_stopped():
    """images/wvds.yaml (what `make boot` boots): the gateway seals batches with no limit, and the boot ends
    only when the gateway does, so the system runs until Ctrl-C or --duration."""
    image = yaml.safe_load((ROOT / "images" / "wvds.yaml").read_text())
    gateway = image["tasks"]["gateway"]["config"]
    assert "sensor" in gateway and gateway["outbox"].get("batches", 0) == 0
    assert image["run"]["until"] == ["gateway"]
    assert image["tasks"]["sensor"]["config"].get("count", 0) == 0
