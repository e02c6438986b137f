"""A kernel core with hand-made tasks, driven by frames (shared by the pure violation tests)."""
from __future__ import annotations

import struct

from capabilities.mapdb import Kind
from capabilities.rights import CapRights, MemRights
from kernel_model.abi import INVALID_CAP, EnvSlot, GateOp, IpcError, IpcFlags, MsgTag, Proto, sel, timeouts
from kernel_model.events import Deliver, Kill, Rule
from kernel_model.kernel import Kernel
from kernel_model.logs import LogBudget
from kernel_model.objects import Budget, Factory, IpcGate, Irq, KernelLog, Memory, Task, Thread
from kernel_model.wire import FrameKind, Invocation

# The frame layouts written out independently of wire.py (docstring there), so any field can hold any value.
_INV = struct.Struct("<BBHIQQQQQQH")
_ITEM = struct.Struct("<BBHIQQQ")

RWS = CapRights.R | CapRights.W | CapRights.S
SVR = CapRights.parse("svr")


def words(*ws: int) -> bytes:
    return b"".join(struct.pack("<q" if w < 0 else "<Q", w) for w in ws)


def call(dest, proto=0x100, data=b"", **kw) -> Invocation:
    return Invocation(IpcFlags.CALL, dest, MsgTag(proto, len(data) // 8, len(kw.get("items", ()))), data, **kw)


def frame(flags=IpcFlags.CALL, dest=16 << 12, tag=0x100 << 16, *, timeout=0, label=0, rcv_obj=INVALID_CAP,
          mem=(0, 0), items=(), data=b"") -> bytes:
    """An invocation frame packed by hand, so any field can hold any value (``items``: raw item tuples)."""
    head = _INV.pack(FrameKind.INVOCATION, int(flags), len(items), timeout, dest, tag, label, rcv_obj, mem[0], mem[1],
                     len(data))
    return head + b"".join(_ITEM.pack(*i) for i in items) + data


def others_unchanged(w: World, before: dict, attacker: str) -> None:
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


class Arena:
    """An honest server and client sharing a kernel with two attackers (the fuzzers' world).

    Each attacker holds what a compromised gateway would (a client cap to the server's
    gate) plus its own gate, an IRQ, a small factory, a log with a rate budget, two
    pages of memory and a gate between the two (evil1 serves it), under a capability
    and mapping budget. ``check()`` asserts what must
    hold whatever the attackers wrote.
    """

    BUDGET = Budget(caps=14, mappings=4)

    def __init__(self):
        self.w = w = World()
        self.server, self.client = w.task("server"), w.task("client")
        self.gate = IpcGate(name="svc")
        w.give(self.server, 16, self.gate, SVR)
        w.give(self.client, 16, self.gate, CapRights.R | CapRights.W)
        bound = w.do(self.server, call(sel(16), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x10, sel(EnvSlot.THREAD))))
        assert bound.tag.label == 0
        w.do(self.server, Invocation(IpcFlags.WAIT))
        self.handled = w.count("server")
        self.pair = IpcGate(name="pair")  # the attackers talk to each other: caps and memory move between them
        self.evil = [self.attacker(f"evil{i}") for i in range(2)]
        self.honest_tables = self.tables()
        self.calls = 0

    def attacker(self, name: str) -> Task:
        w = self.w
        t = w.task(name)
        t.budget = self.BUDGET
        w.give(t, EnvSlot.LOG, KernelLog(name=f"{name}.log", tag=name, budget=LogBudget(20, 2000)),
               CapRights.R | CapRights.W)
        w.give(t, 16, self.gate, CapRights.R | CapRights.W)
        w.give(t, 17, IpcGate(name=f"{name}.own"), SVR)
        w.give(t, 18, Irq(name=f"{name}.irq"), RWS)
        w.give(t, 19, Factory(name=f"{name}.fab", quota=6), RWS)
        w.give(t, 20, self.pair, SVR if name == "evil1" else RWS)
        if name == "evil1":
            w.do(t, call(sel(20), Proto.KOBJECT, words(GateOp.BIND_THREAD, 0x20, sel(EnvSlot.THREAD))))
        mem = Memory(name=f"{name}.ram", size=0x2000, phys=0x300000)
        w.k.db.insert_root(t.space, Kind.MEMORY, 0x4000_0000, mem, int(MemRights.R | MemRights.W), size=0x2000)
        return t

    def tables(self) -> dict:
        dump = self.w.tables()
        return {name: dump[name] for name in ("server", "client")}

    def pump(self) -> None:
        """The honest server's loop: answer every message with its label, re-wait after an error."""
        w = self.w
        for _ in range(50):
            if w.count("server") == self.handled:
                return
            self.handled = w.count("server")
            msg = w.last("server")
            if msg.error is not IpcError.OK:
                w.do(self.server, Invocation(IpcFlags.WAIT))
            else:
                w.do(self.server, Invocation(IpcFlags.REPLY_AND_WAIT, INVALID_CAP, MsgTag(0, 1), words(msg.label),
                                             timeout=timeouts(0, None)))
        raise AssertionError("the server never got back to waiting")

    def step(self, who: int, data: bytes) -> None:
        """Attacker ``who`` writes ``data`` on its channel."""
        effects = self.w.k.syscall(self.evil[who], data, self.w.now)
        self.w._collect(effects)
        for eff in effects:
            if isinstance(eff, Kill):
                assert eff.task in self.evil, f"an honest task was killed: {eff.task.describe()}"
            if isinstance(eff, Deliver):
                assert eff.task.alive
        self.pump()

    def tick(self, us: int) -> None:
        self.w.tick(us)
        self.pump()

    def respawn(self, who: int, status: int) -> None:
        old = self.evil[who]
        self.w._collect(self.w.k.task_exited(old, status, self.w.now))
        self.pump()
        self.evil[who] = self.attacker(old.name)

    def honest_call(self) -> None:
        self.calls += 1
        self.w.do(self.client, call(sel(16), data=words(self.calls), timeout=timeouts(0, 1_000_000)))
        self.pump()
        res = self.w.last("client")
        assert res.error is IpcError.OK and res.data == words(0x10 | CapRights.W), res

    def check(self) -> None:
        k = self.w.k
        assert not [v for v in k.violations if v.rule is Rule.KERNEL_BUG], "the kernel needed its last resort"
        assert self.tables() == self.honest_tables, "an honest task's capability table changed"
        for t in k.tasks.values():
            if t.alive and t.budget is not None:
                assert k.db.count(t.space, Kind.OBJECT) <= t.budget.caps
                assert k.db.count(t.space, Kind.MEMORY) <= t.budget.mappings
        # nothing leaks: memory being retired still has holders, held-back results are for live tasks
        assert all(k.db.holders(mem) for mem in k._retiring.values())
        assert all(eff.task.alive for eff in k._held)
        # expire looks only at the timed threads: exactly the blocked ones with a deadline
        assert {t for t in k._blocked if t.deadline is not None} == k._timed
        k.next_deadline()
        k.dump()
