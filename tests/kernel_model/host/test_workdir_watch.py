"""The work-dir watch's decision, with a fake statvfs and clock (kernel_model/host/workdir_watch.py)."""
from __future__ import annotations

import os

from kernel_model.events import Rule
from kernel_model.host.workdir_watch import PERIOD_US, WorkdirWatch, fullness


def stat(bavail=100, favail=10, blocks=512, files=32, frsize=4096) -> os.statvfs_result:
    return os.statvfs_result((frsize, frsize, blocks, bavail, bavail, files, favail, favail, 0, 255))


def test_full_means_no_inode_left_or_at_most_the_slack_of_bytes():
    assert fullness(stat()) is None
    assert fullness(stat(favail=0)) == "files"
    assert fullness(stat(bavail=16)) == "bytes" and fullness(stat(bavail=17)) is None  # 64 KiB
    assert fullness(stat(blocks=100_000, bavail=1000)) == "bytes"  # 1 % of a large budget
    assert fullness(stat(blocks=100_000, bavail=1001)) is None
    assert fullness(stat(blocks=0, bavail=0, files=0, favail=0)) is None  # not a real filesystem: no claim


def test_one_event_per_filling_and_again_only_after_room_came_back():
    current = {"/proc/7/root/run/t": stat()}
    watch = WorkdirWatch(statvfs=lambda p: current[p], root=lambda pid: f"/proc/{pid}/root")
    assert watch.wait_us(0) is None and watch.check(0) == []  # nothing watched: the loop may sleep
    watch.watch(1, "t", 7, "/run/t")
    assert watch.check(0) == [] and watch.wait_us(0) == PERIOD_US
    current["/proc/7/root/run/t"] = stat(bavail=0)
    assert watch.check(PERIOD_US - 1) == []  # not yet time to look
    [v] = watch.check(PERIOD_US)
    assert (v.task, v.rule, v.error, v.time_us) == ("t", Rule.WORKDIR_BUDGET, "ENOSPC", PERIOD_US)
    assert "bytes budget of 2097152 bytes" in v.detail
    assert watch.check(2 * PERIOD_US) == []  # still full: already said
    current["/proc/7/root/run/t"] = stat(bavail=50)
    assert watch.check(3 * PERIOD_US) == []
    current["/proc/7/root/run/t"] = stat(favail=0)
    [v] = watch.check(4 * PERIOD_US)
    assert "files budget of 32 files" in v.detail


def test_a_vanished_task_is_skipped_and_a_forgotten_one_is_not_looked_at():
    looked = []

    def statvfs(path):
        looked.append(path)
        raise FileNotFoundError(path)

    watch = WorkdirWatch(statvfs=statvfs, root=lambda pid: f"/proc/{pid}/root")
    watch.watch(1, "t", 7, "/run/t")
    assert watch.check(0) == [] and looked == ["/proc/7/root/run/t"]
    watch.forget(1)
    assert watch.check(PERIOD_US) == [] and looked == ["/proc/7/root/run/t"]
