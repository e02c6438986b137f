"""What a kernel-object operation (``invoke``) may ask of the kernel: a small public interface.

``Kernel`` implements it; ``invoke`` depends only on this interface, never on ``Kernel``'s
internals (so the two modules do not import each other).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from capabilities.mapdb import MappingDb, Node, ObjectCap
from kernel_model.abi import Err, IpcError
from kernel_model.bootrecord import BootRecord
from kernel_model.events import Effect, Rule
from kernel_model.logs import LogStream
from kernel_model.objects import Factory, IpcGate, Irq, KObject, Memory, Task, Thread
from kernel_model.wire import Invocation, Item, RecvItem


@dataclasses.dataclass
class Transfer:
    """What mapping a message's typed items did: the items as received, the memory to pass, or an error."""

    items: tuple[RecvItem, ...] = ()
    memory: tuple[tuple[Memory, bool], ...] = ()
    error: tuple[IpcError, IpcError] | None = None  # (sender's, receiver's) error
    budget: bool = False  # the error is the receiver's capability or mapping budget


class KernelOps(Protocol):
    now: int  #: µs
    trace: bool  #: emit a Traced effect per rendezvous, reply and kernel operation
    db: MappingDb
    root_factory: Factory

    def lookup(self, task: Task, selector: int) -> ObjectCap[Any] | None:
        """The object capability ``selector`` names in ``task``'s table (None: empty or invalid)."""

    def deny(self, thread: Thread, selector: int, operation: str, rule: Rule, error: str, detail: str = "") -> None:
        """Record a violation by ``thread``'s task."""

    def cap_budget_refusal(self, task: Task, slot: int, selector: int, op: str) -> Err | None:
        """``Err.ENOMEM`` (and a violation) if a new capability in ``slot`` exceeds ``task``'s budget."""

    def adopt(self, obj: KObject) -> None:
        """A new object the kernel keeps track of (tasks, IRQs)."""

    def revoked(self, removed: Sequence[Node[Any]]) -> None:
        """Tell the holders of ``removed`` memory mappings; retire what they still have mapped."""

    def transfer(self, src: Task, items: Sequence[Item], dst: Task, rinv: Invocation | None, via_s: bool, *,
                 window: bool) -> Transfer:
        """Map or grant typed items from ``src`` into ``dst`` (all checked before anything changes)."""

    def delete_object(self, obj: KObject) -> None:
        """Every capability to ``obj`` empties."""

    def start(self, task: Task, record: BootRecord, memory: tuple[Memory, ...] = ()) -> None:
        """Start ``task``'s process with ``record``."""

    def next_generation(self, name: str) -> int:
        """The generation of the next incarnation of the task called ``name``."""

    def live_incarnation(self, name: str, other_than: Task) -> Task | None:
        """A started, live task called ``name`` other than ``other_than``."""

    def send_to(self, sender: Thread, target: Thread | None, gate: IpcGate | None, label: int, via_s: bool) -> None:
        """Continue ``sender``'s send phase towards ``target`` (through ``gate``)."""

    def trigger(self, irq: Irq) -> None:
        """Fire ``irq``."""

    def emit(self, effect: Effect) -> None:
        """Ask the host to carry out ``effect``."""

    def log_dropping(self, stream: LogStream, tag: str, color: str) -> None:
        """``stream`` drops lines: a notice is due when its second is over."""
