"""Frames on a task's one channel to the kernel (a SOCK_SEQPACKET socket). Pure.

A task sends ``Invocation`` frames (the only system call is IPC, as in L4)
and receives ``Result`` frames, plus two kernel-initiated frames: ``Boot``
(first frame a new task reads: its initial stack, i.e. env and args) and
``Revoke`` (memory taken away; the runtime unmaps it). Memory mapped into a
task arrives as fds in SCM_RIGHTS of the ``Result`` frame, one per memory
item, in item order.

Layouts (little-endian)::

  Invocation  B kind=1 | B flags | H n_items | I timeout | Q dest | Q tag | Q label
              | Q rcv_obj | Q rcv_mem_base | Q rcv_mem_size | H data_len   (58 bytes)
              then n_items x Item, then data
  Item        B kind(1 obj, 2 mem) | B grant | H rights | I 0 | Q index | Q size | Q dest
  Result      B kind=2 | B error | H n_items | I 0 | Q tag | Q label | H data_len
              then n_items x RecvItem (same layout as Item: index = where it landed,
              dest = offset into the memory object), then data
  Boot        B kind=3 | 7x pad | data = the boot record (``bootrecord.BootRecord.encode``)
  Revoke      B kind=4 | B 0 | H n | I 0 | n x Q virtual address
  Remap       B kind=5 | B 0 | H rights | I 0 | Q address | Q size | Q offset  (+ the new fd)

Labels are unsigned 64-bit words. A frame is decoded completely before the
kernel acts on it: every field is range-checked (flags, the tag's bound
``words + 2*items <= 63`` and its item count against the items sent, item
kinds, grant flags, padding, rights bits, page-aligned receive windows that fit
in the address space, the boot record's size). A frame that does not parse
raises ``WireError``; the kernel answers it with ``L4_IPC_SEABORTED`` and a
``malformed-frame`` violation, never by crashing. The layouts are declared once
with ``protocols.layout``; both decoders are total (any bytes: a frame or a
``WireError``).
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

from kernel_model.abi import _TAGS, INVALID_CAP, MR_BYTES, MR_WORDS, PAGE_SIZE, IpcError, MsgTag
from kernel_model.bootrecord import BootRecord, BootRecordError
from protocols.layout import REST, U8, U16, U32, U64, DecodeError, Layout, const, pad


class FrameKind(enum.IntEnum):
    INVOCATION = 1
    RESULT = 2
    BOOT = 3
    REVOKE = 4
    REMAP = 5
    DIRECT = 6  #: a direct channel's end (the fd) for the task (kernel_model.direct)
    PENDING = 7  #: doorbell: a message waits in the kernel for this task's thread


class ItemKind(enum.IntEnum):
    OBJECT = 1
    MEMORY = 2


class WireError(DecodeError):
    """A frame that does not decode (a ``protocols.layout.DecodeError``, so a ``ValueError``)."""


# The layouts, declared once (``protocols.layout``); the frame classes below compose them.
_INV = Layout((const("u8", FrameKind.INVOCATION), U8, U16, U32, U64, U64, U64, U64, U64, U64, U16),
              ("flags", "n_items", "timeout", "dest", "tag", "label", "rcv_obj", "rcv_mem_base", "rcv_mem_size",
               "data_len"))
_ITEM = Layout((U8, U8, U16, pad(4), U64, U64, U64), ("kind", "grant", "rights", "index", "size", "dest"))
_RES = Layout((const("u8", FrameKind.RESULT), U8, U16, pad(4), U64, U64, U16),
              ("error", "n_items", "tag", "label", "data_len"))
_BOOT = Layout((const("u8", FrameKind.BOOT), pad(7), REST), ("record",))
_REV = Layout((const("u8", FrameKind.REVOKE), pad(1), U16, pad(4)), ("n",))
_ADDRESS = Layout((U64,), ("address",))
_REMAP = Layout((const("u8", FrameKind.REMAP), pad(1), U16, pad(4), U64, U64, U64),
                ("rights", "address", "size", "offset"))


def _fixed_size(layout: Layout) -> int:
    """The byte size of a layout whose every field has a fixed size."""
    if layout.size is None:
        raise TypeError("not a fixed-size layout")
    return layout.size


_INV_SIZE, _ITEM_SIZE, _RES_SIZE, _REV_SIZE, _ADDRESS_SIZE, _REMAP_SIZE = map(
    _fixed_size, (_INV, _ITEM, _RES, _REV, _ADDRESS, _REMAP))
assert _INV_SIZE == 58 and _ITEM_SIZE == 32 and _RES_SIZE == 26 and _REV_SIZE == 8 and _REMAP_SIZE == 32
# The hot records as their precompiled ``struct.Struct`` (every field, the constant kind and the padding
# included): one C call per record; the checks the layouts make are made by hand below, same messages.
_INV_ST, _ITEM_ST, _RES_ST = (layout.struct for layout in (_INV, _ITEM, _RES))
assert _INV_ST is not None and _ITEM_ST is not None and _RES_ST is not None
_INV_UNPACK, _ITEM_UNPACK, _RES_UNPACK = _INV_ST.unpack_from, _ITEM_ST.unpack_from, _RES_ST.unpack_from
_INV_PACK, _ITEM_PACK, _RES_PACK = _INV_ST.pack, _ITEM_ST.pack, _RES_ST.pack
_ITEM_KINDS: dict[int, ItemKind] = {int(k): k for k in ItemKind}
_IPC_ERRORS: dict[int, IpcError] = {int(e): e for e in IpcError}

MAX_DATA = 16 * 1024  #: only Thread EX_REGS (the initial stack) may use more than 63 MRs
MAX_ITEMS = 31
WORD_LIMIT = 1 << 64
ITEM_RIGHTS = 0x2F  #: every rights bit an item may carry: CapRights R|W|S|D|SVR, MemRights R|W|X
LOG_WRITE_MAX = MR_BYTES - 16  #: text bytes in one Log WRITE (MR[0] = op, MR[1] = count): 488


def log_chunks(text: str) -> list[bytes]:
    """A line of text as the Log WRITE payloads that carry it (newline added if missing)."""
    raw = (text if text.endswith("\n") else text + "\n").encode()
    return [raw[i:i + LOG_WRITE_MAX] for i in range(0, len(raw), LOG_WRITE_MAX)]


class _Value:
    """Plain ``__slots__`` records for the per-message values (not frozen dataclasses: the kernel makes
    and reads several per syscall). Compared and hashed by their fields, like the dataclasses were;
    treated as immutable by every user."""

    __slots__ = ()
    __match_args__: tuple[str, ...] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__match_args__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _Value)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"{type(self).__name__}({args})"


class Item(_Value):
    """A typed send item (a flexpage plus map/grant). ``index`` = selector or virtual address.

    ``dest`` is the hot spot: for Task::map the destination selector/address in the
    target space; in ordinary IPC the offset into the receiver's window (ignored
    for objects, whose window is one slot).
    """

    __match_args__ = ("kind", "index", "rights", "size", "grant", "dest")
    __slots__ = __match_args__  # the fields, in order (compare, hash, repr)

    def __init__(self, kind: ItemKind, index: int, rights: int, size: int = 0, grant: bool = False, dest: int = 0):
        self.kind = kind
        self.index = index
        self.rights = rights
        self.size = size
        self.grant = grant
        self.dest = dest

    @classmethod
    def obj(cls, selector: int, rights: int, *, grant: bool = False, dest: int = 0) -> Item:
        return cls(ItemKind.OBJECT, selector, int(rights), 1, grant, dest)

    @classmethod
    def mem(cls, address: int, size: int, rights: int, *, grant: bool = False, dest: int = 0) -> Item:
        return cls(ItemKind.MEMORY, address, int(rights), size, grant, dest)


_NO_TAG = MsgTag()


class Invocation(_Value):
    __match_args__ = ("flags", "dest", "tag", "data", "items", "timeout", "label", "rcv_obj", "rcv_mem_base",
                 "rcv_mem_size")
    __slots__ = __match_args__  # the fields, in order (compare, hash, repr)
    flags: int  #: IpcFlags bits (a plain int once decoded: the kernel tests them on every call)
    rcv_obj: int  #: selector of the slot that receives one cap, or INVALID_CAP
    rcv_mem_size: int  #: 0 = no memory receive window

    def __init__(self, flags: int, dest: int = INVALID_CAP, tag: MsgTag = _NO_TAG, data: bytes = b"",
                 items: tuple[Item, ...] = (), timeout: int = 0, label: int = 0, rcv_obj: int = INVALID_CAP,
                 rcv_mem_base: int = 0, rcv_mem_size: int = 0):
        self.flags = flags
        self.dest = dest
        self.tag = tag
        self.data = data
        self.items = items
        self.timeout = timeout
        self.label = label
        self.rcv_obj = rcv_obj
        self.rcv_mem_base = rcv_mem_base
        self.rcv_mem_size = rcv_mem_size

    def encode(self) -> bytes:
        items, data = self.items, self.data
        head = _INV_PACK(FrameKind.INVOCATION, int(self.flags), len(items), self.timeout, self.dest, self.tag.raw(),
                         self.label, self.rcv_obj, self.rcv_mem_base, self.rcv_mem_size, len(data))
        if items:
            return head + b"".join([_pack_item(i) for i in items]) + data
        return head + data


class RecvItem(_Value):
    __match_args__ = ("kind", "index", "rights", "size", "offset")
    __slots__ = __match_args__  # the fields, in order (compare, hash, repr)
    index: int  #: selector or virtual address where it landed
    offset: int  #: memory: offset into the passed memory object (the fd)

    def __init__(self, kind: ItemKind, index: int, rights: int, size: int = 0, offset: int = 0):
        self.kind = kind
        self.index = index
        self.rights = rights
        self.size = size
        self.offset = offset


class Result(_Value):
    __match_args__ = ("error", "tag", "label", "data", "items")
    __slots__ = __match_args__  # the fields, in order (compare, hash, repr)

    def __init__(self, error: IpcError = IpcError.OK, tag: MsgTag = _NO_TAG, label: int = 0, data: bytes = b"",
                 items: tuple[RecvItem, ...] = ()):
        self.error = error
        self.tag = tag
        self.label = label
        self.data = data
        self.items = items

    def encode(self) -> bytes:
        items, data = self.items, self.data
        head = _RES_PACK(FrameKind.RESULT, self.error, len(items), 0, self.tag.raw(), self.label, len(data))
        if items:
            return head + b"".join([_ITEM_PACK(i.kind, 0, i.rights, 0, i.index, i.size, i.offset)
                                    for i in items]) + data
        return head + data


@dataclasses.dataclass(frozen=True, slots=True)
class Boot:
    record: BootRecord

    def encode(self) -> bytes:
        return _BOOT.encode([self.record.encode()])


@dataclasses.dataclass(frozen=True, slots=True)
class Revoke:
    addresses: tuple[int, ...]

    def encode(self) -> bytes:
        return _REV.pack(len(self.addresses)) + b"".join(_ADDRESS.pack(a) for a in self.addresses)


@dataclasses.dataclass(frozen=True, slots=True)
class Remap:
    """The mapping at ``address`` has a new backing object: the fd that comes with this frame."""

    address: int
    size: int
    offset: int
    rights: int

    def encode(self) -> bytes:
        return _REMAP.pack(self.rights, self.address, self.size, self.offset)


def _pack_item(item: Item) -> bytes:
    return _ITEM_PACK(item.kind, 1 if item.grant else 0, item.rights & 0xFFFF, 0, item.index, item.size, item.dest)


def decode_invocation(frame: bytes) -> Invocation:
    """Parse a task's frame; every malformation is a ``WireError`` with a reason.

    ``Invocation.data`` is always a ``bytes`` copy (never a view of ``frame``): the caller may reuse
    its buffer once this returns.
    """
    size = len(frame)
    if size < _INV_SIZE:
        raise WireError(f"frame of {size} bytes is shorter than the {_INV_SIZE}-byte header")
    (kind, flags, n_items, timeout, dest, tag, label, rcv_obj, mem_base, mem_size,
     data_len) = _INV_UNPACK(frame)
    if kind != FrameKind.INVOCATION:
        raise WireError(f"expected an invocation frame, got kind {frame[0]}")
    msgtag = _TAGS.get(tag) or MsgTag.from_raw(tag)
    if flags & ~0xF:
        raise WireError(f"unknown IPC flags {flags:#x}")
    if n_items > MAX_ITEMS:
        raise WireError(f"{n_items} typed items (at most {MAX_ITEMS})")
    if data_len > MAX_DATA:
        raise WireError(f"{data_len} data bytes (at most {MAX_DATA})")
    if msgtag.words + 2 * msgtag.items > MR_WORDS:
        raise WireError(f"message tag has {msgtag.words} words + 2 x {msgtag.items} items: "
                        f"more than {MR_WORDS} registers")
    if msgtag.items != n_items:
        raise WireError(f"message tag announces {msgtag.items} typed items, the frame carries {n_items}")
    if (mem_base | mem_size) & (PAGE_SIZE - 1) or mem_base + mem_size > WORD_LIMIT:
        raise WireError(f"receive window {mem_base:#x}+{mem_size:#x} is not page-aligned inside the address space")
    expected = _INV_SIZE + n_items * _ITEM_SIZE + data_len
    if size != expected:
        raise WireError(f"frame is {size} bytes, header says {expected}")
    if not n_items:
        return Invocation(flags, dest, msgtag, bytes(frame[_INV_SIZE:]), (), timeout, label, rcv_obj, mem_base,
                          mem_size)
    items = []
    off = _INV_SIZE
    for _ in range(n_items):
        ikind, grant, rights, padding, index, isize, dst = _ITEM_UNPACK(frame, off)
        if padding:
            raise WireError(f"typed item with padding {bytes(frame[off + 4:off + 8]).hex()}")
        off += _ITEM_SIZE
        item_kind = _ITEM_KINDS.get(ikind)
        if item_kind is None:
            raise WireError(f"unknown typed item kind {ikind}")
        if grant > 1 or rights & ~ITEM_RIGHTS:
            raise WireError(f"typed item with grant {grant}, rights {rights:#x}")
        if item_kind is ItemKind.MEMORY and index + isize > WORD_LIMIT:
            raise WireError(f"memory item {index:#x}+{isize:#x} wraps the address space")
        items.append(Item(item_kind, index, rights, isize, bool(grant), dst))
    return Invocation(flags, dest, msgtag, bytes(frame[off:off + data_len]), tuple(items),
                      timeout, label, rcv_obj, mem_base, mem_size)


def decode_kernel_frame(frame: bytes) -> Result | Boot | Revoke | Remap | DirectEnd | Doorbell:
    """Parse a frame from the kernel (task side); anything malformed is a ``WireError``."""
    if not frame:
        raise WireError("empty frame")
    try:
        return _KERNEL_FRAMES[frame[0]](frame)
    except KeyError:
        raise WireError(f"unknown kernel frame kind {frame[0]}") from None
    except WireError:
        raise
    except DecodeError as exc:
        raise WireError(f"malformed {FrameKind(frame[0]).name.lower()} frame: {exc}") from None


def _decode_result(frame: bytes) -> Result:
    size = len(frame)
    if size < _RES_SIZE:
        raise WireError(f"malformed result frame: {size} bytes, the layout has {_RES_SIZE}")
    _kind, error, n_items, padding, tag, label, data_len = _RES_UNPACK(frame)  # the kind: decode_kernel_frame's
    if padding:
        raise WireError("malformed result frame: padding is not zero")
    off = _RES_SIZE
    if size != off + n_items * _ITEM_SIZE + data_len:
        raise WireError(f"result frame is {size} bytes, header says {off + n_items * _ITEM_SIZE + data_len}")
    items = []
    for _ in range(n_items):
        ikind, _grant, rights, padding, index, isize, offset = _ITEM_UNPACK(frame, off)
        if padding:
            raise WireError("malformed result frame: padding is not zero")
        off += _ITEM_SIZE
        item_kind = _ITEM_KINDS.get(ikind)
        if item_kind is None:
            raise WireError(f"unknown received item kind {ikind}")
        items.append(RecvItem(item_kind, index, rights, isize, offset))
    ipc_error = _IPC_ERRORS.get(error)
    if ipc_error is None:
        raise WireError(f"unknown IPC error {error}")
    return Result(ipc_error, _TAGS.get(tag) or MsgTag.from_raw(tag), label, bytes(frame[off:]), tuple(items))


def _decode_boot(frame: bytes) -> Boot:
    (raw,) = _BOOT.decode(frame)
    try:
        return Boot(BootRecord.decode(bytes(raw)))
    except BootRecordError as exc:  # not UTF-8, not JSON, nested beyond the parser, a bad field
        raise WireError(f"bad boot record: {exc}") from None


def _decode_revoke(frame: bytes) -> Revoke:
    (n,) = _REV.unpack_from(frame)
    if len(frame) != _REV_SIZE + n * _ADDRESS_SIZE:
        raise WireError(f"revoke frame is {len(frame)} bytes for {n} addresses")
    return Revoke(tuple(_ADDRESS.unpack_from(frame, _REV_SIZE + i * _ADDRESS_SIZE)[0] for i in range(n)))


def _decode_remap(frame: bytes) -> Remap:
    rights, address, size, offset = _REMAP.decode(frame)
    return Remap(address, size, offset, rights)


_KERNEL_FRAMES: dict[int, Callable[[bytes], Result | Boot | Revoke | Remap | DirectEnd | Doorbell]] = {
    FrameKind.RESULT: _decode_result, FrameKind.BOOT: _decode_boot,
    FrameKind.REVOKE: _decode_revoke, FrameKind.REMAP: _decode_remap}


# -- direct channels (kernel_model.direct): two more kernel-initiated frames ---------------------------
#   Direct   B kind=6 | B role (1 client, 2 server) | H 0 | I 0 | Q handle | Q word   (+ the end's fd)
#            word = the selector the end stands for (client) or the label bound to it (server)
#   Pending  B kind=7 | 7x pad
_DIRECT = Layout((const("u8", FrameKind.DIRECT), U8, pad(6), U64, U64), ("role", "handle", "word"))
_PENDING = Layout((const("u8", FrameKind.PENDING), pad(7)), ())
DIRECT_CLIENT, DIRECT_SERVER = 1, 2


@dataclasses.dataclass(frozen=True, slots=True)
class DirectEnd:
    """One end of a direct channel (the fd that comes with this frame): for the client, the end that stands
    for ``word`` = its selector; for the server, the end whose messages carry the label ``word``."""

    role: int
    handle: int
    word: int

    def encode(self) -> bytes:
        return _DIRECT.pack(self.role, self.handle, self.word)


@dataclasses.dataclass(frozen=True, slots=True)
class Doorbell:
    """A message waits in the kernel for a thread that idles in user space serving direct channels."""

    def encode(self) -> bytes:
        return _PENDING.pack()


def _decode_direct(frame: bytes) -> DirectEnd:
    role, handle, word = _DIRECT.decode(frame)
    if role not in (DIRECT_CLIENT, DIRECT_SERVER):
        raise WireError(f"direct frame with role {role}")
    return DirectEnd(role, handle, word)


def _decode_pending(frame: bytes) -> Doorbell:
    _PENDING.decode(frame)
    return Doorbell()


_KERNEL_FRAMES[FrameKind.DIRECT] = _decode_direct
_KERNEL_FRAMES[FrameKind.PENDING] = _decode_pending
