"""The kernel's state and what every part of the kernel uses: capability lookup, violations, effects. Pure.

The kernel is split by concept: ``ipc`` (the rendezvous), ``transfer`` (typed items),
``retire`` (memory retirement) and ``kernel`` (boot, syscall entry, tasks, objects); each is
a part of ``kernel.Kernel`` over this state.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from capabilities.mapdb import Kind, MappingDb, Node, ObjectCap
from kernel_model.abi import L4_CAP_SHIFT
from kernel_model.direct import DirectRegistry
from kernel_model.events import Deliver, Denied, Effect, Rule, Violation
from kernel_model.invoke import Reply
from kernel_model.logs import LogStream
from kernel_model.objects import Debugger, Factory, Irq, KernelLog, Memory, Task, Thread
from kernel_model.ops import Transfer
from kernel_model.wire import Invocation, Item

RAM_BASE = 0x0010_0000  #: physical address of the first RAM byte Sigma0 owns
_OBJECT = Kind.OBJECT


class KernelState:
    """All kernel state. Only the kernel ever holds capability tables (in ``db``)."""

    def __init__(self, *, object_quota: int = 100_000):
        self.db = MappingDb()
        self.tasks: dict[int, Task] = {}
        self.root_factory = Factory(name="factory", quota=object_quota)
        self.console = KernelLog(name="kernel-log")
        self.debugger = Debugger(name="jdb")
        self.violations: list[Violation] = []
        self.ram_size = 0
        self.now = 0
        self._effects: list[Effect] = []
        self._blocked: set[Thread] = set()
        self._timed: set[Thread] = set()  # the blocked threads with a deadline (what ``expire`` looks at)
        self.ipc_count = 0
        self.trace = False  # emit a Traced effect per rendezvous, reply and kernel operation
        self._ipcs: dict[Task, int] = {}  # IPCs per task object (named lazily: ``ipc_by_task``)
        self._served: dict[Task, int] = {}  # messages delivered to a task by a sender or an IRQ (the view)
        self.irqs: list[Irq] = []
        self._retiring: dict[int, Memory] = {}  # memory a live task lost but still has mapped
        self._current: Thread | None = None  # the thread whose syscall is being handled
        self._held: list[Deliver] = []  # results held back from holders of memory being retired
        self.sigma0: Task | None = None
        self.moe: Task | None = None
        self._generations: dict[str, int] = {}
        self.log_drops: dict[int, tuple[LogStream, str, str]] = {}  # logs that dropped lines: (stream, tag,
        # colour), a notice due
        self.directs = DirectRegistry()  # kernel-granted direct channels (kernel_model.direct, direct_paths)
        self._cuts: list[Effect] = []  # their cuts in this kernel step: emitted before every other effect

    @property
    def ipc_by_task(self) -> dict[str, int]:
        """IPCs made per task name (every incarnation of a name together)."""
        return _by_name(self._ipcs)

    @property
    def served_by_task(self) -> dict[str, int]:
        """Messages delivered to each task name by a sender or an IRQ: what the live view shows as served."""
        return _by_name(self._served)

    def lookup(self, task: Task, selector: int) -> ObjectCap[Any] | None:
        if selector & 0x800:  # L4_INVALID_CAP_BIT
            return None
        node = self.db.node_at((task.id, _OBJECT, selector >> L4_CAP_SHIFT))  # task.space is task.id
        return node if isinstance(node, ObjectCap) else None

    def deny(self, thread: Thread, selector: int, operation: str, rule: Rule, error: str, detail: str = "") -> None:
        self._deny_task(thread.task, selector, operation, rule, error, detail)

    def _deny_task(self, task: Task | None, selector: int, operation: str, rule: Rule, error: str,
                   detail: str = "") -> None:
        v = Violation(task.describe() if task else "?", selector, operation, rule, error, detail, self.now)
        self.violations.append(v)
        self._effects.append(Denied(v))

    def emit(self, effect: Effect) -> None:
        self._effects.append(effect)

    # -- implemented by the other parts of the kernel
    def transfer(self, src: Task, items: Sequence[Item], dst: Task, rinv: Invocation | None, via_s: bool, *,
                 window: bool) -> Transfer:
        raise NotImplementedError

    def revoked(self, removed: Sequence[Node[Any]]) -> None:
        raise NotImplementedError

    def _invoke(self, thread: Thread, cap: ObjectCap[Any], inv: Invocation) -> Reply | None:
        raise NotImplementedError

    def _direct_open(self, sender: Thread, receiver: Thread, inv: Invocation) -> None:
        raise NotImplementedError

    def _doorbell(self, thread: Thread) -> None:
        raise NotImplementedError

    def _take(self) -> list[Effect]:
        raise NotImplementedError


def _by_name(counts: dict[Task, int]) -> dict[str, int]:
    """Counts kept per task object on the hot path, named only when someone asks (incarnations summed)."""
    out: dict[str, int] = {}
    for task, n in counts.items():
        name = task.describe()
        out[name] = out.get(name, 0) + n
    return out
