"""Which OS confinement each task process gets. The kernel host decides; the task's bootstrap applies it.

Every task (Sigma0 and Moe included) gets, as far as the machine allows
(``tasks/runtime/confine.py``, docs/confinement.md): its own uid when the
kernel runs as root, leased from the host-wide registry (``uids.py``) for as
long as its process lives, its own network namespace (no network at all)
unless the image gives it ``network.connect`` (driver tasks such as the
network proxy), its own mount namespace with a read-only filesystem except
its work directory, in which the image file, its boot modules (key material
such as the KEK) and the development CA's directory are hidden, an empty
/proc, no inherited fds but its channel, no environment, resource limits,
no_new_privs and a seccomp filter.
"""
from __future__ import annotations

import os
from pathlib import Path

from capabilities.image import TaskDecl
from kernel_model.abi import CHANNEL_FD
from kernel_model.bootrecord import ConfinementPolicy
from kernel_model.host import workdirs
from kernel_model.host.images import PROJECT_ROOT
from kernel_model.host.keystore_devices import workdir_entries
from kernel_model.host.uids import Lease, UidRegistry
from kernel_model.objects import Task

#: never visible to a task: the shipped images and their key material (dev KEK), the development CA's key
ALWAYS_HIDDEN = (PROJECT_ROOT / "images", PROJECT_ROOT / "var" / "est-ca")


class HostConfinement:
    """``(task, index, workdir, decl) -> ConfinementPolicy`` (the network namespace follows the boot
    record's network endpoints, which the supervisor sets); ``release(task)`` once its process is reaped."""

    def __init__(self, registry: UidRegistry | None = None):
        self.registry = registry or UidRegistry()
        self.leases: dict[int, Lease] = {}  # id(task) -> its uid lease

    def __call__(self, task: Task, index: int, workdir: Path, decl: TaskDecl | None,
                 hidden: tuple[str, ...] = ()) -> ConfinementPolicy:
        root = os.geteuid() == 0
        uid = None
        if root:
            self.release(task)
            lease = self.registry.acquire()
            self.leases[id(task)] = lease
            uid = lease.uid
        hide = {str(p) for p in ALWAYS_HIDDEN if p.exists()} | {
            str(Path(p).resolve()) for p in hidden if os.path.exists(p)}
        image = None
        passthrough = workdir_entries(decl.config) if decl is not None else ()
        if decl is not None and workdirs.available():  # a task of the image: its work dir has a budget
            image = str(workdirs.ensure_image(workdir, decl.workdir_bytes, decl.workdir_files, exclude=passthrough))
        policy = ConfinementPolicy(allow_fds=(CHANNEL_FD,), uid=uid, writable_dir=str(workdir), parent_pid=os.getpid(),
                                   strict=root, hidden_paths=tuple(sorted(hide)),
                                   workdir_image=image, workdir_passthrough=passthrough)
        if policy.uid is not None:  # the work dir (and what earlier runs left in it) belongs to this incarnation
            gid = policy.gid if policy.gid is not None else policy.uid
            for path in [workdir, *workdir.rglob("*")]:
                os.chown(path, policy.uid, gid, follow_symlinks=False)
        return policy

    def release(self, task: Task) -> None:
        lease = self.leases.pop(id(task), None)
        if lease is not None:
            lease.release()


#: the one instance every Supervisor of this process uses (leases are per task object)
policy_for = HostConfinement()
