"""The objects Moe serves. Each is an IPC gate bound to Moe's thread; its label picks the object.

``handle(msg) -> Response | None`` (``None``: the protocol is send-only, no reply).
Clients are told apart by the kernel-set label, never by anything in the message.
"""
from __future__ import annotations

import dataclasses
import struct
from typing import TYPE_CHECKING, Any, Protocol

from capabilities.rights import CapRights, MemRights
from kernel_model.abi import PAGE_SIZE, DataspaceOp, Err, NamespaceOp, ParentOp, Proto
from kernel_model.wire import Item

if TYPE_CHECKING:
    from tasks.runtime.memory import Region


class MoeServices(Protocol):
    """What Moe's objects ask of Moe (``server.Moe`` provides it)."""

    def say(self, text: str) -> None: ...

    def new_dataspace(self, size: int, *, name: str, owner: object = None) -> DataspaceObject | None: ...

    def child_exited(self, record: Any, code: int, notice_from: ParentObject) -> None: ...  # record: loader.TaskRecord


@dataclasses.dataclass
class Response:
    status: int = 0
    words: tuple[int, ...] = ()
    blob: bytes = b""
    items: tuple[Item, ...] = ()


def denied(code: Err) -> Response:
    return Response(-int(code))


class Served:
    protocol: int = 0
    label: int = 0
    gate: int = 0  # Moe's selector of the gate (with all rights)

    def handle(self, msg) -> Response | None:  # pragma: no cover - interface
        raise NotImplementedError


class ParentObject(Served):
    """A task's parent: the kernel signals the child's exit here (signal 0, value = exit code).

    Only a kernel notice counts: it arrives with a label in the kernel's label space
    (``abi.KERNEL_LABEL``), which no task can produce. The same words sent by the task
    itself through its parent cap are ignored: a running task cannot declare itself dead.
    """

    protocol = Proto.PARENT

    def __init__(self, moe: MoeServices, record):
        self.moe, self.record = moe, record

    def handle(self, msg) -> Response | None:
        return None  # from the task itself: whatever it says, it is still running

    def kernel_notice(self, msg) -> None:
        if msg.proto == Proto.PARENT and msg.has_words(2) and msg.word(0) == ParentOp.SIGNAL:
            self.moe.child_exited(self.record, msg.word(1, signed=True), self)


@dataclasses.dataclass
class Backing:
    address: int  # where the memory sits in Moe's address space
    size: int  # mapped size (whole pages)
    rights: MemRights
    region: Region | None = None  # Moe's own mapping (None for boot modules Moe cannot write)


class DataspaceObject(Served):
    """Memory: map it (read-only unless the client's cap has W and the dataspace is writable)."""

    protocol = Proto.DATASPACE

    def __init__(self, moe: MoeServices, backing: Backing, size: int, *, owner=None):
        self.moe, self.backing, self.size, self.owner = moe, backing, size, owner

    def handle(self, msg) -> Response | None:
        if msg.proto != Proto.DATASPACE or not msg.has_words(1):
            return denied(Err.EBADPROTO)
        op = msg.word(0)
        client_w = bool(msg.label & CapRights.W)
        if op == DataspaceOp.SIZE:
            return Response(0, (self.size,))
        if op == DataspaceOp.MAP:
            if not msg.has_words(4):
                return denied(Err.EMSGTOOSHORT)
            offset, size, flags = msg.word(1), msg.word(2), msg.word(3)
            size = -(-size // PAGE_SIZE) * PAGE_SIZE
            if offset % PAGE_SIZE or size == 0 or offset + size > self.backing.size:
                return denied(Err.ERANGE)
            rights = MemRights.R
            if flags & 1:
                if not client_w or MemRights.W not in self.backing.rights:
                    return denied(Err.EPERM)
                rights |= MemRights.W
            return Response(0, items=(Item.mem(self.backing.address + offset, size, rights),))
        if op == DataspaceOp.CLEAR:
            if not client_w or self.backing.region is None:
                return denied(Err.EACCESS)
            self.backing.region.write(0, bytes(self.backing.size))
            return Response(0)
        return denied(Err.ENOSYS)


class NamespaceObject(Served):
    """Moe's ``rom``: boot modules by name, as read-only dataspaces."""

    protocol = Proto.NAMESPACE

    def __init__(self, moe: MoeServices, entries: dict[str, int]):
        self.moe, self.entries = moe, entries  # name -> Moe's selector of the dataspace gate

    def handle(self, msg) -> Response | None:
        if msg.proto != Proto.NAMESPACE or not msg.has_words(1) or msg.word(0) != NamespaceOp.QUERY:
            return denied(Err.EBADPROTO)
        name = msg.blob(1).rstrip(b"\0").decode("utf-8", "replace")
        gate = self.entries.get(name)
        if gate is None:
            return denied(Err.ENOENT)
        return Response(0, items=(Item.obj(gate, CapRights.R),))


class AllocatorObject(Served):
    """A task's ``mem_alloc``: new dataspaces, charged against the task's memory quota."""

    protocol = Proto.FACTORY

    def __init__(self, moe: MoeServices, record, quota: int):
        self.moe, self.record, self.quota, self.used = moe, record, quota, 0

    def handle(self, msg) -> Response | None:
        if msg.proto != Proto.FACTORY or not msg.has_words(2) or msg.word(0, signed=True) != Proto.DATASPACE:
            return denied(Err.EBADPROTO)
        size = -(-msg.word(1) // PAGE_SIZE) * PAGE_SIZE
        if size == 0:
            return denied(Err.EINVAL)
        if self.used + size > self.quota:
            self.moe.say(f"{self.record.name}: dataspace of {size} bytes refused, quota "
                         f"{self.used}/{self.quota} bytes used (-L4_ENOMEM)")
            return denied(Err.ENOMEM)
        ds = self.moe.new_dataspace(size, name=f"{self.record.name}.ds", owner=self)
        if ds is None:
            return denied(Err.ENOMEM)
        self.used += size
        return Response(0, items=(Item.obj(ds.gate, CapRights.R | CapRights.W),))


def exit_words(data: bytes) -> tuple[int, int]:
    return struct.unpack_from("<qq", data)
