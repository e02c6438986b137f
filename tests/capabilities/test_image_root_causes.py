"""Each mistake is reported once, at its root cause; unbounded input is refused before it costs anything."""
from __future__ import annotations

import pytest

from capabilities.image import MAX_EXPANDED_NODES, MAX_IMAGE_BYTES, ImageError, expanded_size, parse_image
from kernel_model.host.images import load_image, program_exists


def problems(text: str) -> list:
    with pytest.raises(ImageError) as info:
        parse_image(text, "t.yaml", program_exists)
    return info.value.problems


def test_an_error_inside_a_task_is_not_also_an_unknown_run_until_task():
    found = problems("name: t\nrun: {until: [a]}\ntasks:\n  a: {program: hello.ping_server, restart_limit: x}\n")
    assert [(p.field, p.message.split(" (")[0]) for p in found] == [("tasks.a.restart_limit",
                                                                     "expected an integer >= 0, got 'x'")]


def test_an_object_type_typo_is_one_error_not_one_per_referencing_cap():
    found = problems("name: t\nobjects:\n  ping: {type: gaet}\ntasks:\n"
                     "  a: {program: hello.ping_server, caps: {ping: 'ping:svr'}}\n"
                     "  b: {program: hello.ping_client, caps: {ping: 'ping:rw'}}\n")
    assert [p.field for p in found] == ["objects.ping.type"]
    assert "unknown object type 'gaet'" in found[0].message


def test_a_bad_size_unit_is_one_error():
    found = problems("name: t\nobjects:\n  shm: {type: dataspace, size: 4KB}\ntasks:\n"
                     "  a: {program: hello.ping_server}\n")
    assert [p.field for p in found] == ["objects.shm.size"]
    assert "4KiB" in found[0].message


def test_dataspaces_larger_than_ram_are_refused_before_boot():
    found = problems("name: t\nram: 1MiB\nobjects:\n  big: {type: dataspace, size: 2MiB}\ntasks:\n"
                     "  a: {program: hello.ping_server}\n")
    assert [(p.line, p.field) for p in found] == [(4, "objects.big.size")]
    assert "need 2097152 bytes but ram is 1048576" in found[0].message
    # together, too: two that each fit but not both
    found = problems("name: t\nram: 1MiB\nobjects:\n  x: {type: dataspace, size: 600KiB}\n"
                     "  y: {type: dataspace, size: 600KiB}\ntasks:\n  a: {program: hello.ping_server}\n")
    assert [p.field for p in found] == ["objects.x.size"]


def test_empty_run_until_is_an_error_not_a_run_forever():
    found = problems("name: t\nrun: {until: []}\ntasks:\n  a: {program: hello.ping_server}\n")
    assert [p.field for p in found] == ["run.until"] and "never ends" in found[0].message


def test_alias_bomb_is_refused():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9))
    text = "name: t\ntasks:\n  a:\n    program: hello.ping_server\n    config:\n" + \
        "".join("      " + line + "\n" for line in bomb.splitlines())
    found = problems(text)
    assert [p.field for p in found] == ["<yaml>"] and "alias" in found[0].message


def test_alias_expansion_is_counted_once_per_node():
    """The count visits each composed node once however often it is aliased (linear, not exponential)."""
    import yaml
    text = "a: &a [1, 2]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c]\n"
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    total, _ = expanded_size(root, MAX_EXPANDED_NODES)
    # root + 4 keys + a(1+2) + b(1+2*3) + c(1+2*7) + d(1+2*15)
    assert total == 1 + 4 + 3 + 7 + 15 + 31
    legit = "name: t\ntasks:\n  a:\n    program: hello.ping_server\n    config: {x: &x [1, 2], y: *x}\n"
    assert parse_image(legit, "t.yaml", program_exists).task("a").config == {"x": [1, 2], "y": [1, 2]}


def test_an_oversized_image_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:
        f.write("name: t\n# " + "x" * (MAX_IMAGE_BYTES + 10) + "\n")
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.problems[0].field == "<file>" and "at most" in info.value.problems[0].message


def test_an_endless_input_is_refused(tmp_path):
    """/dev/zero never ends: the loader reads at most the limit and says so (no MemoryError)."""
    with pytest.raises(ImageError) as info:
        load_image("/dev/zero")
    assert "at most" in info.value.problems[0].message


def test_deep_nesting_is_an_error_not_a_crash():
    found = problems("name: t\ntasks: " + "[" * 2000 + "]" * 2000 + "\n")
    assert found[0].field == "<yaml>"


def test_cli_refuses_an_oversized_dataspace_with_status_2(tmp_path, capsys):
    from l4emu.cli import main
    path = tmp_path / "big.yaml"
    path.write_text("name: t\nram: 1MiB\nobjects:\n  big: {type: dataspace, size: 2MiB}\ntasks:\n"
                    "  a: {program: hello.ping_server, caps: {big: 'big:rw'}}\n")
    assert main(["boot", str(path)]) == 2
    assert "objects.big.size" in capsys.readouterr().err
