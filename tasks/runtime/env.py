"""What a task program sees: its name, args, capabilities by name, and IPC.

A program is a module with ``main(env) -> int``. ``env`` wraps the one
kernel channel; everything the task can do goes through ``env.ipc``, which
names capabilities by selector and lets the kernel decide. Results are values
(``Msg`` with an ``IpcError``); nothing raises on an IPC failure unless the
program asks (``Msg.check()``).
"""
from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Iterable

from capabilities.rights import MemRights
from kernel_model.abi import (
    INVALID_CAP,
    MR_BYTES,
    DataspaceOp,
    EnvSlot,
    Err,
    FactoryOp,
    GateOp,
    IpcError,
    IpcFlags,
    IrqOp,
    LogOp,
    MsgTag,
    NamespaceOp,
    Proto,
    TaskOp,
    UnmapMask,
    sel,
    timeouts,
)
from kernel_model.bootrecord import BootRecord
from kernel_model.wire import DIRECT_CLIENT, DirectEnd, Invocation, Item, ItemKind, RecvItem, Revoke, log_chunks
from tasks.runtime.channel import KernelChannel
from tasks.runtime.direct import KERNEL, Direct
from tasks.runtime.memory import Region, RegionManager

_CALL, _REPLY, _RECV, _WAIT = int(IpcFlags.CALL), int(IpcFlags.REPLY), int(IpcFlags.RECV), int(IpcFlags.WAIT)
_REPLY_AND_WAIT = int(IpcFlags.REPLY_AND_WAIT)


class MissingCapability(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class IpcFailed(Exception):
    def __init__(self, error: IpcError | int, what: str = ""):
        self.error = error
        super().__init__(f"{what}: {error!r}" if what else repr(error))


def pack(*words: int, blob: bytes = b"") -> bytes:
    """Message registers: unsigned/signed words, then a byte blob padded to whole words."""
    data = b"".join(struct.pack("<q" if w < 0 else "<Q", w) for w in words) + blob
    return data + bytes(-len(data) % 8)


@dataclasses.dataclass(frozen=True)
class Msg:
    error: IpcError
    tag: MsgTag
    label: int
    data: bytes = b""
    items: tuple[RecvItem, ...] = ()
    regions: tuple[Region, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is IpcError.OK

    @property
    def proto(self) -> int:
        return self.tag.label

    @property
    def status(self) -> int:
        """The reply tag label: >= 0 success (a server's return value), < 0 = -L4_E*."""
        return self.tag.label

    def word(self, i: int, signed: bool = False) -> int:
        if len(self.data) < 8 * (i + 1):
            raise ValueError(f"message has {len(self.data) // 8} words, wanted word {i}")
        return struct.unpack_from("<q" if signed else "<Q", self.data, 8 * i)[0]

    def has_words(self, n: int) -> bool:
        return len(self.data) >= 8 * n

    def blob(self, start_word: int) -> bytes:
        return self.data[8 * start_word:]

    def cap(self) -> int:
        """Selector of the capability this message delivered (INVALID_CAP if none)."""
        return next((i.index for i in self.items if i.kind is ItemKind.OBJECT), INVALID_CAP)

    def check(self, what: str = "ipc") -> Msg:
        if not self.ok:
            raise IpcFailed(self.error, what)
        if self.tag.label < 0:
            raise IpcFailed(self.tag.label, what)
        return self


_new = object.__new__


def _fast_msg(error: IpcError, tag: MsgTag, label: int, data: bytes) -> Msg:
    """A ``Msg`` without the frozen dataclass' per-field ``__setattr__`` (the direct path's hot spot)."""
    msg = _new(Msg)
    msg.__dict__.update(error=error, tag=tag, label=label, data=data, items=(), regions=())
    return msg


class TaskLog:
    """``env.log(text)``: a line to the task's log capability, in Log WRITE chunks (``wire.log_chunks``)."""

    def __init__(self, env: Env):
        self.env = env

    def __call__(self, text: str) -> None:
        self.write(text)

    def write(self, text: str) -> None:
        for chunk in log_chunks(text):
            self.env.send(EnvSlot.LOG << 12, Proto.LOG, LogOp.WRITE, len(chunk), blob=chunk)


class Env:
    def __init__(self, channel: KernelChannel, record: BootRecord, boot_fds: list[int] | None = None):
        self.channel = channel
        self.record = record
        self.name: str = record.name or "?"
        self.args: list[str] = list(record.args)
        self.caps: dict[str, int] = dict(record.caps)
        self.config: dict = dict(record.config)
        self.memory = RegionManager()
        self._next_slot = record.first_free
        self.log = TaskLog(self)
        channel.on_revoke = self._on_revoke
        channel.on_remap = lambda notice, fd: self.memory.remap(notice.address, fd, notice.size, notice.offset,
                                                                notice.rights)
        self.direct = Direct(channel.sock.fileno())  # direct channels (tasks.runtime.direct)
        self.direct.make_msg = _fast_msg
        channel.on_direct = self._on_direct
        channel.on_pending = self._on_pending
        # Root tasks start with boot modules mapped (read-only), described in the record.
        self.modules: dict[str, Region] = {}
        for mod, fd in zip(record.modules, boot_fds or [], strict=False):
            item = RecvItem(ItemKind.MEMORY, mod.address, 0x5, mod.mapped, 0)
            self.modules[mod.name] = self.memory.attach(item, fd)

    # -- names and slots -----------------------------------------------------
    def cap(self, name: str) -> int:
        try:
            return self.caps[name]
        except KeyError:
            have = ", ".join(sorted(self.caps)) or "none"
            raise MissingCapability(f"task {self.name!r} has no capability named {name!r} (it has: {have})") from None

    def has(self, name: str) -> bool:
        return name in self.caps

    def alloc_slot(self) -> int:
        selector = sel(self._next_slot)
        self._next_slot += 1
        return selector

    # -- the one system call -------------------------------------------------
    def ipc(self, flags: IpcFlags, dest: int = INVALID_CAP, proto: int = 0, data: bytes = b"", *,
            items: Iterable[Item] = (), send_timeout_us: int | None = None, recv_timeout_us: int | None = None,
            label: int = 0, rcv_cap: int = INVALID_CAP, rcv_mem: int = 0) -> Msg:
        direct = self.direct
        if direct.active:  # this task holds direct ends, or owes a reply on one
            if flags == _CALL:  # the client's hot path
                end = direct.clients.get(dest)
                if end is not None and not items and rcv_cap == INVALID_CAP and not rcv_mem \
                        and send_timeout_us != 0 and recv_timeout_us != 0 and len(data) <= MR_BYTES:
                    msg = direct.call(end, dest, proto, data, recv_timeout_us)
                    if msg is not None:
                        return msg
            elif flags == _REPLY_AND_WAIT and direct.reply_end is not None and not items and not direct.pending \
                    and recv_timeout_us is None and len(data) <= MR_BYTES:  # the server's hot path
                owed, direct.reply_end = direct.reply_end, None
                direct.reply(owed, proto, len(data) >> 3, data, False)  # a caller gone: its end is dropped
                return self._direct_wait(None, rcv_cap, rcv_mem)
            else:
                msg = self._direct_ipc(int(flags), dest, proto, data, items, recv_timeout_us, rcv_cap, rcv_mem)
                if msg is not None:
                    return msg
        return self._kernel_ipc(flags, dest, proto, data, items=items, send_timeout_us=send_timeout_us,
                                recv_timeout_us=recv_timeout_us, label=label, rcv_cap=rcv_cap, rcv_mem=rcv_mem)

    def _kernel_ipc(self, flags: IpcFlags | int, dest: int = INVALID_CAP, proto: int = 0, data: bytes = b"", *,
                    items: Iterable[Item] = (), send_timeout_us: int | None = None,
                    recv_timeout_us: int | None = None, label: int = 0, rcv_cap: int = INVALID_CAP,
                    rcv_mem: int = 0) -> Msg:
        items = tuple(items)
        mem_base = self.memory.reserve(rcv_mem) if rcv_mem else 0
        inv = Invocation(flags, dest, MsgTag(proto, len(data) // 8 if len(data) <= MR_BYTES else 63, len(items)),
                         data, items, timeouts(send_timeout_us, recv_timeout_us), label, rcv_cap, mem_base,
                         -(-rcv_mem // 4096) * 4096 if rcv_mem else 0)
        result, fds = self.channel.ipc(inv)
        regions = []
        mem_items = [i for i in result.items if i.kind is ItemKind.MEMORY]
        for item, fd in zip(mem_items, fds, strict=False):
            regions.append(self.memory.attach(item, fd))
        return Msg(result.error, result.tag, result.label, result.data, result.items, tuple(regions))

    def call(self, dest: int, proto: int, *words: int, blob: bytes = b"", items: Iterable[Item] = (),
             timeout_us: int | None = None, rcv_cap: int = INVALID_CAP, rcv_mem: int = 0) -> Msg:
        return self.ipc(IpcFlags.CALL, dest, proto, pack(*words, blob=blob), items=items,
                        send_timeout_us=timeout_us, recv_timeout_us=timeout_us, rcv_cap=rcv_cap, rcv_mem=rcv_mem)

    def send(self, dest: int, proto: int, *words: int, blob: bytes = b"", items: Iterable[Item] = (),
             timeout_us: int | None = None, label: int = 0) -> Msg:
        return self.ipc(IpcFlags.SEND, dest, proto, pack(*words, blob=blob), items=items,
                        send_timeout_us=timeout_us, label=label)

    def wait(self, timeout_us: int | None = None, *, rcv_cap: int = INVALID_CAP, rcv_mem: int = 0) -> Msg:
        return self.ipc(IpcFlags.WAIT, recv_timeout_us=timeout_us, rcv_cap=rcv_cap, rcv_mem=rcv_mem)

    def receive(self, irq: int, timeout_us: int | None = None) -> Msg:
        """Closed wait on one IRQ (l4_irq_receive)."""
        return self.ipc(IpcFlags.RECV, irq, recv_timeout_us=timeout_us)

    def sleep(self, us: int) -> None:
        self.ipc(IpcFlags.RECV, INVALID_CAP, recv_timeout_us=us)

    def reply(self, status: int, *words: int, blob: bytes = b"", items: Iterable[Item] = ()) -> Msg:
        return self.ipc(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, status, pack(*words, blob=blob), items=items,
                        send_timeout_us=0)

    def reply_and_wait(self, status: int, *words: int, blob: bytes = b"", items: Iterable[Item] = (),
                       timeout_us: int | None = None, rcv_cap: int = INVALID_CAP, rcv_mem: int = 0) -> Msg:
        return self.ipc(IpcFlags.REPLY_AND_WAIT, INVALID_CAP, status, pack(*words, blob=blob), items=items,
                        send_timeout_us=0, recv_timeout_us=timeout_us, rcv_cap=rcv_cap, rcv_mem=rcv_mem)

    # -- kernel objects --------------------------------------------------------
    def thread(self) -> int:
        return sel(EnvSlot.THREAD)

    def bind_gate(self, gate: int, label: int) -> int:
        return self.call(gate, Proto.KOBJECT, GateOp.BIND_THREAD, label, self.thread()).status

    def bind_irq(self, irq: int, label: int) -> int:
        return self.call(irq, Proto.IRQ_SENDER, IrqOp.BIND, label, self.thread()).status

    def trigger(self, irq: int) -> Msg:
        return self.send(irq, Proto.IRQ, IrqOp.TRIGGER)

    # -- Moe's services ----------------------------------------------------------
    def alloc_dataspace(self, size: int) -> int:
        """A new dataspace from Moe, charged to this task's memory quota. Raises IpcFailed(-L4_ENOMEM)."""
        slot = self.alloc_slot()
        self.call(sel(EnvSlot.MEM_ALLOC), Proto.FACTORY, Proto.DATASPACE, size, rcv_cap=slot).check("alloc_dataspace")
        return slot

    def dataspace_size(self, ds: int) -> int:
        return self.call(ds, Proto.DATASPACE, DataspaceOp.SIZE).check("dataspace size").word(0)

    def map_dataspace(self, ds: int, *, writable: bool = False, offset: int = 0, size: int | None = None) -> Region:
        if size is None:
            size = self.dataspace_size(ds) - offset
        msg = self.call(ds, Proto.DATASPACE, DataspaceOp.MAP, offset, size, 1 if writable else 0, rcv_mem=size)
        msg.check("map dataspace")
        if not msg.regions:
            raise IpcFailed(-Err.EPERM, "map dataspace: nothing was mapped")
        return msg.regions[0]

    def unmap(self, region: Region, *, only_others: bool = False) -> int:
        """Unmap ``region`` (and everything mapped from it). ``only_others``: revoke only what this
        task handed out (L4_FP_OTHER_SPACES) and keep its own mapping."""
        mask = UnmapMask.OTHER_SPACES if only_others else UnmapMask.ALL_SPACES
        status = self.call(sel(EnvSlot.TASK), Proto.TASK, TaskOp.UNMAP, mask, ItemKind.MEMORY, region.address,
                           region.size, int(MemRights.R | MemRights.W | MemRights.X)).status
        if not only_others:
            self.memory.revoke(region.address)
        return status

    def rom(self, name: str, namespace: str = "rom") -> int:
        """Look a boot module up in Moe's rom namespace; returns a read-only dataspace cap."""
        slot = self.alloc_slot()
        self.call(self.cap(namespace), Proto.NAMESPACE, NamespaceOp.QUERY, blob=name.encode(),
                  rcv_cap=slot).check(f"rom/{name}")
        return slot

    def create(self, factory: int, what: FactoryOp, *args: int) -> Msg:
        slot = self.alloc_slot()
        return self.call(factory, Proto.FACTORY, int(what), *args, rcv_cap=slot)

    # -- direct channels (tasks.runtime.direct) ------------------------------------------------
    def _on_direct(self, frame: DirectEnd, fd: int) -> None:
        if frame.role == DIRECT_CLIENT:
            self.direct.add_client(frame.word, frame.handle, fd)
        else:
            self.direct.add_server(frame.word, frame.handle, fd)

    def _on_pending(self) -> None:
        self.direct.pending = True

    def _direct_ipc(self, flags: int, dest: int, proto: int, data: bytes, items: Iterable[Item],
                    recv_timeout_us: int | None, rcv_cap: int, rcv_mem: int) -> Msg | None:
        """A server's reply and receive with direct ends, or None: the kernel path as always."""
        direct = self.direct
        if flags & _REPLY:
            end = direct.reply_end
            if end is not None:  # the request came from a direct end: the reply goes back there
                direct.reply_end = None
                items = tuple(items)
                words = len(data) >> 3 if len(data) <= MR_BYTES else 63
                error = direct.reply(end, proto, words, data[:MR_BYTES], bool(items))
                if error is IpcError.SEMSGCUT or not flags & _RECV:
                    direct._update()
                    return _fast_msg(error if error is IpcError.SEMSGCUT else IpcError.OK, MsgTag(proto, words), 0, b"")
                return self._direct_wait(recv_timeout_us, rcv_cap, rcv_mem)
            if not direct.servers or not flags & _RECV:
                return None
            # a kernel caller's reply, and any message queued meanwhile, in one system call
            msg = self._kernel_ipc(flags, INVALID_CAP, proto, data, items=items, send_timeout_us=0,
                                   recv_timeout_us=0, rcv_cap=rcv_cap, rcv_mem=rcv_mem)
            if msg.error is not IpcError.RETIMEOUT:
                return msg
            return self._direct_wait(recv_timeout_us, rcv_cap, rcv_mem)
        if flags == _WAIT and dest == INVALID_CAP and direct.servers:
            return self._direct_wait(recv_timeout_us, rcv_cap, rcv_mem)
        return None

    def _direct_wait(self, timeout_us: int | None, rcv_cap: int, rcv_mem: int) -> Msg:
        """An open wait for a server holding direct ends: it idles in ``poll`` over its kernel channel and its
        ends (in user space, so it can make any other system call while it serves direct messages); the
        kernel's doorbell says a message waits there, taken with a zero-timeout receive."""
        direct = self.direct
        deadline = None if timeout_us is None else time.monotonic() + timeout_us / 1e6
        if not direct.pending and direct.servers:  # the hot path: the next request on a direct end
            got = direct.next_request(None if timeout_us is None else -(-timeout_us // 1000))
            if got is not None and got is not KERNEL:
                return got
            if got is KERNEL:
                self.channel.drain()
        while True:
            left_us = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1e6))
            if not direct.servers:
                return self._kernel_ipc(IpcFlags.WAIT, recv_timeout_us=left_us, rcv_cap=rcv_cap, rcv_mem=rcv_mem)
            if direct.pending:
                msg = self._kernel_ipc(IpcFlags.WAIT, recv_timeout_us=0, rcv_cap=rcv_cap, rcv_mem=rcv_mem)
                if msg.error is not IpcError.RETIMEOUT:
                    return msg  # more may wait: ``pending`` stays set until a receive finds nothing
                direct.pending = False
                continue
            if left_us == 0:
                return _fast_msg(IpcError.RETIMEOUT, MsgTag(), 0, b"")
            got = direct.next_request(None if left_us is None else -(-left_us // 1000))
            if got is KERNEL:
                self.channel.drain()
            elif got is not None:
                return got

    def _on_revoke(self, notice: Revoke) -> None:
        for addr in notice.addresses:
            self.memory.revoke(addr)
