"""Image validation: a good image parses; every bad image in bad_images/ fails with the exact problem.

Each file in bad_images/ starts with ``# expect: LINE:COL: FIELD: MESSAGE-PREFIX`` (capDL's
``.right`` files and Microkit's tests/sdf corpus do the same).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from capabilities.image import ImageError, parse_image
from capabilities.rights import CapRights
from kernel_model.host.images import load_image, program_exists

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
BAD = sorted((HERE / "bad_images").glob("*.yaml"))


def test_hello_image_parses():
    image = load_image(ROOT / "images" / "hello.yaml").image
    assert image.name == "hello" and image.run_until == ("client",)
    server = image.task("server")
    assert server.cap("ping").rights == CapRights.parse("svr")
    assert image.task("client").cap("ping").rights == CapRights.R | CapRights.W
    assert image.object("shm").size == 4096


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_image_is_rejected_with_file_line_and_field(path):
    text = path.read_text()
    expect = text.splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(ImageError) as info:
        parse_image(text, str(path), program_exists)
    first = str(info.value.problems[0])
    assert first.startswith(f"{path}:{expect}"), first


def test_every_problem_is_reported_not_just_the_first():
    text = "name: t\ntasks:\n  a:\n    program: hello.ping_server\n    foo: 1\n    caps: {x: 'nope:r'}\n"
    with pytest.raises(ImageError) as info:
        parse_image(text, "multi.yaml", program_exists)
    assert [p.field for p in info.value.problems] == ["tasks.a.foo", "tasks.a.caps.x"]


def test_unreadable_module_names_its_line(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: m\nmodules:\n  conf: missing.json\ntasks:\n  a: {program: hello.ping_server}\n")
    with pytest.raises(ImageError) as info:
        load_image(path)
    problem = info.value.problems[0]
    assert (problem.line, problem.field) == (3, "modules.conf") and "missing.json" in problem.message


def test_cli_exits_2_and_names_the_problem(tmp_path, capsys):
    from l4emu.cli import main
    path = tmp_path / "bad.yaml"
    path.write_text((HERE / "bad_images" / "unknown_rights_letter.yaml").read_text())
    assert main(["boot", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:7:15:" in err.replace("\n", "") and "unknown rights letter 'x'" in err


def test_run_until_names_exactly_the_tasks_it_lists_whatever_their_order():
    """A regression: run.until once came out as the last task *declared*, so images/wvds.yaml
    (until: [gateway], sensor declared last) never ended when its gateway did."""
    text = ("name: u\nrun: {until: [first, third]}\ntasks:\n"
            "  first: {program: hello.ping_client}\n  second: {program: hello.ping_client}\n"
            "  third: {program: hello.ping_client}\n  last: {program: hello.ping_client}\n")
    assert parse_image(text, "u.yaml", None).run_until == ("first", "third")
