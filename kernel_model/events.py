"""What the kernel core asks its I/O shell to do (effects), and the violation record.

The kernel core never touches a process, socket or fd: it returns these values
and the host (``kernel_model.host``) carries them out.
"""
from __future__ import annotations

import dataclasses
import enum

from kernel_model.bootrecord import BootRecord
from kernel_model.objects import Memory, Task
from kernel_model.wire import Result


class Rule(enum.Enum):
    """Which rule a denied operation broke; named in every violation record."""

    NO_CAPABILITY = "no-capability"  # invoked selector is empty in the caller's table
    WRONG_OBJECT_TYPE = "wrong-object-type"  # protocol not spoken by that kind of object
    MISSING_RIGHT = "missing-right"  # the cap lacks a right the operation needs
    MAP_SOURCE_EMPTY = "map-source-empty"  # typed item names a cap/page the sender does not hold
    NO_RECEIVE_WINDOW = "no-receive-window"  # receiver opened no buffer for a typed item
    REPLY_WITHOUT_CALLER = "reply-without-caller"  # no (or an already used) reply capability
    FACTORY_QUOTA = "factory-quota"  # factory has no quota left
    MALFORMED_FRAME = "malformed-frame"  # the task's frame did not parse
    BAD_ARGUMENT = "bad-argument"  # a kernel operation's arguments are invalid
    ABSOLUTE_TIMEOUT = "absolute-timeout"  # bit 15 of a timeout half: refused, no buffer registers here
    RESERVED_LABEL = "reserved-label"  # a label in the kernel's half of the label space (bit 63)
    ONE_INCARNATION = "one-incarnation"  # starting a task whose name has a live incarnation
    CAP_BUDGET = "cap-budget"  # the task's capability slots are all used
    MAPPING_BUDGET = "mapping-budget"  # the task's memory mappings (mapping-database entries) are all used
    CALL_BUDGET = "call-budget"  # the task has as many IPCs in the kernel as its budget allows
    LOG_RATE = "log-rate"  # more log lines/bytes per second than the task's budget
    WORKDIR_BUDGET = "workdir-budget"  # the task's work dir is full (bytes or files): its writes get ENOSPC
    KERNEL_BUG = "kernel-bug"  # the kernel raised while handling the task's frame: the task is faulted


@dataclasses.dataclass(frozen=True)
class Violation:
    """A denied operation: who, with which selector, doing what, against which rule."""

    task: str
    selector: int
    operation: str
    rule: Rule
    error: str  # e.g. "L4_IPC_ENOT_EXISTENT" or "-L4_EPERM"
    detail: str = ""
    time_us: int = 0

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return (f"DENIED {self.task} sel={self.selector:#x} op={self.operation} rule={self.rule.value} "
                f"-> {self.error}{extra}")


@dataclasses.dataclass(slots=True)  # not frozen: made for every result, and frozen init costs 3x
class Deliver:
    """Send ``result`` to the task's channel; ``memory`` lists the fds to pass, in item order."""

    task: Task
    result: Result
    memory: tuple[tuple[Memory, bool], ...] = ()  # (memory object, writable)


@dataclasses.dataclass(frozen=True)
class Spawn:
    """Start the task's process; its first frame is the boot record."""

    task: Task
    record: BootRecord
    memory: tuple[Memory, ...] = ()  # boot memory (read-only), passed with the boot frame in record order


@dataclasses.dataclass(frozen=True)
class Kill:
    task: Task


@dataclasses.dataclass(frozen=True)
class ConsoleLine:
    """One complete log line: ``text`` is already escaped (``kernel_model.logs.printable``); the host
    prints ``tag`` itself, so text can never pose as another task's line. ``notice``: said by the
    kernel about this log (e.g. lines dropped), not written by the task."""

    text: str
    tag: str = ""
    color: str = "w"
    notice: bool = False


@dataclasses.dataclass(frozen=True)
class MemoryCreated:
    memory: Memory


@dataclasses.dataclass(frozen=True)
class Revoked:
    task: Task
    addresses: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class MemoryRetired:
    """Copy ``old``'s bytes into the new object ``new`` (a fresh memfd); ``old`` is never mapped again."""

    old: Memory
    new: Memory


@dataclasses.dataclass(frozen=True)
class Remapped:
    """The mapping at ``address`` in ``task`` now has ``memory`` as its backing (send the new fd)."""

    task: Task
    address: int
    memory: Memory
    offset: int
    size: int
    rights: int


@dataclasses.dataclass(frozen=True)
class Traced:
    """One IPC, for ``l4emu boot --trace`` (only produced when the kernel's ``trace`` is on)."""

    text: str


@dataclasses.dataclass(frozen=True)
class Denied:
    violation: Violation


@dataclasses.dataclass(frozen=True)
class DirectOpen:
    """Hand a fresh socket pair to ``client`` (its end stands for ``selector``) and ``server`` (its end carries
    ``label``, bound by the kernel); keep a dup of the server end as ``handle`` (``kernel_model.direct``)."""

    handle: int
    client: Task
    selector: int
    server: Task
    label: int


@dataclasses.dataclass(frozen=True)
class DirectCut:
    """Shut channel ``handle`` down and drain what the server has not read yet, before anything else."""

    handle: int
    reason: object = None  #: a ``kernel_model.direct.CutReason``


@dataclasses.dataclass(frozen=True)
class Pending:
    """A message waits in the kernel for ``task``'s thread, which idles in user space (a doorbell frame)."""

    task: Task


Effect = (Deliver | Spawn | Kill | ConsoleLine | MemoryCreated | Revoked | MemoryRetired | Remapped | Traced | Denied
          | DirectOpen | DirectCut | Pending)
