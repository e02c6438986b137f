"""Which OS confinement each task process gets. The kernel host decides; the task's bootstrap applies it.

Every task (Sigma0 and Moe included) gets, as far as the machine allows
(``tasks/runtime/confine.py``, docs/confinement.md): its own uid when the
kernel runs as root, its own network namespace (no network at all) unless the
image gives it ``network.connect`` (driver tasks such as the network proxy),
its own mount namespace with a read-only filesystem except its work
directory, an empty /proc, no inherited fds but its channel and console pipe,
no environment, resource limits, no_new_privs and a seccomp filter.
"""
from __future__ import annotations

import os
from pathlib import Path

from capabilities.image import TaskDecl
from kernel_model.objects import Task

TASKS_PER_KERNEL = 1000  # uid blocks per kernel process, so two systems on one host never share uids


def policy_for(task: Task, index: int, workdir: Path, decl: TaskDecl | None) -> dict:
    from tasks.runtime.confine import ConfinementPolicy

    slot = (os.getpid() % 1000) * TASKS_PER_KERNEL + index % TASKS_PER_KERNEL
    policy = ConfinementPolicy.for_task(3, slot, writable_dir=str(workdir), parent_pid=os.getpid(),
                                        network=bool(decl and decl.connect))
    if policy.uid is not None:  # the work dir (and what earlier runs left in it) belongs to this incarnation
        gid = policy.gid if policy.gid is not None else policy.uid
        for path in [workdir, *workdir.rglob("*")]:
            os.chown(path, policy.uid, gid, follow_symlinks=False)
    record = policy.to_record()
    record["report"] = index == 1  # the first task reports what is enforced, for the boot log
    return record
