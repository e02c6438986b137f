"""A task cannot fill the host's disk through its work dir (issue 9, host half): the work dir is a
filesystem of the task's budget (loop-mounted in its own mount namespace), and what it keeps there
survives reboots."""
from __future__ import annotations

import os

import pytest

from kernel_model.host import workdirs

needs_loop = pytest.mark.skipif(not workdirs.available(), reason="needs root, loop devices and mkfs.ext4")

FILL = """
name: fill
run: {until: [evil]}
tasks:
  evil:
    program: testing.adversary
    args: ["read_file:kept.txt", "fill:0x4000000", "files:100", "write_file:kept.txt", "read_file:kept.txt"]
    workdir: {size: 2MiB, files: 32}
"""


@needs_loop
def test_a_task_gets_enospc_at_its_budget_and_keeps_its_files_across_boots(boot, tmp_path):
    (tmp_path / "run" / "evil").mkdir(parents=True)
    (tmp_path / "run" / "evil" / "kept.txt").write_text("from before budgets")  # a plain work dir is moved in
    system = boot(FILL)
    assert system.run(timeout=60) == 0, system.console.text()
    before, fill, files, wrote, after = system.results("evil")
    assert before["read"] and before["bytes"] == len("from before budgets")
    assert fill["errno"] == 28 and fill["written"] < 2 << 20  # ENOSPC: 64 MiB asked, under 2 MiB written
    assert files["errno"] == 28 and files["made"] < 32  # ENOSPC: out of inodes
    assert not wrote["written"] or after["bytes"] == 1  # (full disk: may not even fit one byte)
    image = workdirs.image_for(tmp_path / "run" / "evil")
    assert image.stat().st_size == 2 << 20 and image.stat().st_mode & 0o777 == 0o600  # all the host gave
    assert not (tmp_path / "run" / "evil" / "fill.bin").exists()  # nothing landed in the host directory
    out = workdirs.export_files(tmp_path / "run" / "evil", tmp_path / "export")
    assert (out / "kept.txt").exists() and (out / "fill.bin").stat().st_size == fill["written"]


PERSIST = """
name: persist
run: {until: [t]}
tasks:
  t:
    program: testing.adversary
    args: ["read_file:state.txt", "write_file:state.txt"]
"""


@needs_loop
def test_what_a_task_writes_is_there_at_the_next_boot_and_readable_by_host_tools(boot, tmp_path):
    first = boot(PERSIST)
    assert first.run(timeout=60) == 0, first.console.text()
    first.sup.shutdown()
    assert first.results("t")[0]["read"] is False
    second = boot(PERSIST)
    assert second.run(timeout=60) == 0, second.console.text()
    assert second.results("t")[0] == {**second.results("t")[0], "read": True, "bytes": 1}
    out = workdirs.export_files(tmp_path / "run" / "t", tmp_path / "out")
    assert (out / "state.txt").read_text() == "x"
    assert os.listdir(tmp_path / "run" / "t") == []  # the host directory is only the mount point


def test_a_bad_budget_in_the_image_names_file_line_and_field():
    from capabilities.image import ImageError, parse_image
    text = "name: b\ntasks:\n  t:\n    program: hello.ping_client\n    workdir: {size: 10KiB, files: 2, owner: x}\n"
    with pytest.raises(ImageError) as err:
        parse_image(text, "b.yaml", None)
    message = str(err.value)
    assert "b.yaml:5:" in message and "tasks.t.workdir.size: expected a size from 1MiB to 1TiB" in message
    assert "tasks.t.workdir.files: expected an integer >= 16" in message and "owner" in message
    ok = parse_image(text.replace("size: 10KiB, files: 2, owner: x", "size: 4MiB, files: 64"), "b.yaml", None)
    assert (ok.tasks[0].workdir_bytes, ok.tasks[0].workdir_files) == (4 << 20, 64)


WATCHED = """
name: watched
tasks:
  hog:
    program: testing.adversary
    args: ["fill:0x4000000", "await:go"]
    caps: {go: "go:rs"}
    workdir: {size: 2MiB, files: 32}
  spawner:
    program: testing.adversary
    args: ["files:100", "await:go2"]
    caps: {go2: "go2:rs"}
    workdir: {size: 2MiB, files: 32}
  honest:
    program: testing.adversary
    args: ["write_file:kept.txt", "await:go3"]
    caps: {go3: "go3:rs"}
    workdir: {size: 2MiB, files: 32}
objects:
  go: {type: irq}
  go2: {type: irq}
  go3: {type: irq}
"""


@needs_loop
def test_filling_the_work_dir_is_a_workdir_budget_violation_naming_the_task_and_what_ran_out(boot):
    from kernel_model.events import Rule

    system = boot(WATCHED)

    def budget_events():
        return [v for v in system.console.violations if v.rule is Rule.WORKDIR_BUDGET]

    # the watch may see a full work dir before its writer has logged the ENOSPC it got: wait for both
    system.run(timeout=60, until=lambda: len(budget_events()) >= 2
               and all(system.results(t) for t in ("hog", "spawner")))
    events = {v.task: v for v in budget_events()}
    assert set(events) == {"hog", "spawner"}, system.console.text()  # the honest neighbour is not accused
    assert system.results("hog")[0]["errno"] == 28 and system.results("spawner")[0]["errno"] == 28
    assert events["hog"].error == "ENOSPC" and "bytes budget" in events["hog"].detail
    assert "files budget of 32 files" in events["spawner"].detail
    assert "rule=workdir-budget" in system.console.text()
    assert sum(v.rule is Rule.WORKDIR_BUDGET for v in system.sup.kernel.violations) == 2  # counted as denials
    system.run(timeout=2, until=lambda: False)  # later looks at the same full dirs: no new event
    assert len(budget_events()) == 2
