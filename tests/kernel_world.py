"""A kernel core with hand-made tasks, driven by frames (shared by the pure violation tests)."""
from __future__ import annotations

import struct

from capabilities.mapdb import Kind
from capabilities.rights import CapRights
from kernel_model.abi import EnvSlot, IpcFlags, MsgTag
from kernel_model.events import Deliver
from kernel_model.kernel import Kernel
from kernel_model.objects import Task, Thread
from kernel_model.wire import Invocation

RWS = CapRights.R | CapRights.W | CapRights.S


def words(*ws: int) -> bytes:
    return b"".join(struct.pack("<q" if w < 0 else "<Q", w) for w in ws)


def call(dest, proto=0x100, data=b"", **kw) -> Invocation:
    return Invocation(IpcFlags.CALL, dest, MsgTag(proto, len(data) // 8, len(kw.get("items", ()))), data, **kw)


def others_unchanged(w: "World", before: dict, attacker: str) -> None:
    after = w.tables()
    for task, rows in before.items():
        if task != attacker:
            assert after[task] == rows, f"{task}'s table changed"


class World:
    def __init__(self):
        self.k = Kernel()
        self.now = 0
        self.results: dict[str, list] = {}
        self.effects: list = []

    def task(self, name: str) -> Task:
        t = Task(name=name)
        th = Thread(name=f"{name}.main", task=t)
        t.threads.append(th)
        t.started = True
        self.k.tasks[t.id] = t
        self.give(t, EnvSlot.TASK, t, CapRights.R)
        self.give(t, EnvSlot.THREAD, th, RWS)
        return t

    def give(self, task: Task, slot: int, obj, rights) -> None:
        self.k.db.insert_root(task.space, Kind.OBJECT, slot, obj, int(rights))

    def do(self, task: Task, inv: Invocation):
        return self.raw(task, inv.encode())

    def raw(self, task: Task, frame: bytes):
        """Send any bytes as ``task``'s frame (what an attacker writes to its channel)."""
        self._collect(self.k.syscall(task, frame, self.now))
        return self.last(task.name)

    def tick(self, us: int) -> None:
        self.now += us
        self._collect(self.k.expire(self.now))

    def _collect(self, effects) -> None:
        self.effects = list(effects)
        for eff in effects:
            if isinstance(eff, Deliver):
                eff.result.encode()  # what the host does next: every result must fit its frame
                self.results.setdefault(eff.task.name, []).append(eff.result)

    def last(self, name: str):
        return self.results[name][-1] if self.results.get(name) else None

    def rights(self, task: Task, selector: int) -> CapRights:
        return CapRights(self.k.lookup(task, selector).rights)

    def pending(self, name: str) -> bool:
        return self.last(name) is None

    def count(self, name: str) -> int:
        return len(self.results.get(name, []))

    def tables(self) -> dict:
        return self.k.dump()
