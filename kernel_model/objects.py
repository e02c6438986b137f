"""Kernel objects. Plain data; the rules that act on them live in ``kernel``, ``ipc``, ``transfer``,
``retire`` and ``invoke`` (where ``KERNEL_KINDS`` has one entry per kind).

Every object is reachable only through a capability (an ``ObjectCap`` node in the
kernel's ``MappingDb``); nothing here is ever handed to a task. Moe's user-level
objects (dataspaces, namespaces, log, parent) are IPC gates from the kernel's
point of view.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import itertools
from typing import TYPE_CHECKING

from kernel_model.abi import MsgTag
from kernel_model.logs import LogBudget, LogStream

if TYPE_CHECKING:
    from kernel_model.wire import Invocation

_object_ids = itertools.count(1)


class ObjType(enum.Enum):
    TASK = "task"
    THREAD = "thread"
    GATE = "gate"
    IRQ = "irq"
    FACTORY = "factory"
    LOG = "log"  # the kernel console (Vcon)
    DEBUGGER = "debugger"
    MEMORY = "memory"  # backing of memory mappings (a memfd on the host side)


@dataclasses.dataclass(eq=False)
class KObject:
    name: str = ""
    alive: bool = True
    id: int = dataclasses.field(default_factory=lambda: next(_object_ids))
    type: ObjType = dataclasses.field(init=False)

    def describe(self) -> str:
        return self.name or f"{self.type.value}#{self.id}"


class ThreadState(enum.Enum):
    RUNNING = "running"  # executing user code (not in the kernel)
    SENDING = "sending"  # blocked in a send phase, queued on a partner or unbound gate
    RECEIVING = "receiving"  # blocked in a receive phase
    DEAD = "dead"


@dataclasses.dataclass(eq=False)
class Task(KObject):
    """A protection domain: an object space and a memory space (both in the MappingDb)."""

    threads: list[Thread] = dataclasses.field(default_factory=list)
    started: bool = False
    exit_status: int | None = None
    generation: int = 0  #: incarnation of the task called ``name``: 1 for the first start, +1 per restart
    budget: Budget | None = None  #: None: unlimited (root tasks)
    parent_pending: tuple[IpcGate, int] | None = None  #: (gate, rights) of the parent to notify once a killed
    #: task's process is gone

    def __post_init__(self) -> None:
        self.type = ObjType.TASK

    @property
    def space(self) -> int:
        return self.id


@dataclasses.dataclass(frozen=True)
class Budget:
    """What a task may hold in the kernel at once (declared per task in the image, ``limits``)."""

    caps: int = 1024  #: capability slots in use
    mappings: int = 1024  #: memory mappings (mapping-database entries of its address space)


@dataclasses.dataclass(eq=False)
class AsyncMessage:
    """A message the kernel queued for a thread without a sending thread (IRQ, exit notice)."""

    label: int
    tag: MsgTag
    data: bytes = b""
    irq: Irq | None = None


@dataclasses.dataclass(eq=False)
class Thread(KObject):
    task: Task = dataclasses.field(kw_only=True)  #: the task it runs in (bound at creation)
    state: ThreadState = ThreadState.RUNNING
    inv: Invocation | None = None  # the Invocation the thread is blocked in
    deadline: int | None = None  # µs, for the current blocking phase
    send_label: int = 0  # label the receiver will see for the pending send
    send_via_s: bool = True  # the cap used to reach the partner had S (S-right transfer rule)
    send_target: Thread | IpcGate | None = None  # what the pending send is queued on
    senders: collections.deque[Thread] = dataclasses.field(default_factory=collections.deque)
    asyncs: collections.deque[AsyncMessage] = dataclasses.field(default_factory=collections.deque)
    recv_from: Thread | Irq | None = None  # None = open wait; a Thread (call reply, or itself: sleep) or Irq
    reply_to: Thread | None = None  # implicit single-use reply capability
    generation: int = 0

    def __post_init__(self) -> None:
        self.type = ObjType.THREAD


@dataclasses.dataclass(eq=False)
class IpcGate(KObject):
    label: int = 0
    thread: Thread | None = None
    waiters: collections.deque[Thread] = dataclasses.field(default_factory=collections.deque)
    direct: bool = False  #: calls through it may open direct channels (kernel_model.direct; Factory MR[1] bit 0)

    def __post_init__(self) -> None:
        self.type = ObjType.GATE


@dataclasses.dataclass(eq=False)
class Irq(KObject):
    thread: Thread | None = None
    label: int = 0
    pending: bool = False  # at most one delivery is queued; triggers coalesce
    triggers: int = 0
    coalesced: int = 0

    def __post_init__(self) -> None:
        self.type = ObjType.IRQ


@dataclasses.dataclass(eq=False)
class Factory(KObject):
    quota: int = 0  # objects it may still create (kernel memory, counted in objects)
    used: int = 0
    parent: Factory | None = None

    def __post_init__(self) -> None:
        self.type = ObjType.FACTORY


@dataclasses.dataclass(eq=False)
class KernelLog(KObject):
    """A log (Vcon): each line goes to the console under ``tag`` (the writer's task name if empty)."""

    tag: str = ""
    color: str = "w"
    budget: LogBudget = dataclasses.field(default_factory=LogBudget)
    streams: dict[int, LogStream] = dataclasses.field(default_factory=dict)  # writer task id -> LogStream

    def __post_init__(self) -> None:
        self.type = ObjType.LOG


@dataclasses.dataclass(eq=False)
class Debugger(KObject):
    def __post_init__(self) -> None:
        self.type = ObjType.DEBUGGER


@dataclasses.dataclass(eq=False)
class Memory(KObject):
    """A run of physical frames, backed on the host by one memfd of ``size`` bytes."""

    size: int = 0
    phys: int = 0
    content: bytes = b""  # boot modules: what bootstrap copied in

    def __post_init__(self) -> None:
        self.type = ObjType.MEMORY
