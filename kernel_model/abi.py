"""The kernel ABI shared by the kernel and every task: numbers with L4's real values.

Sources: l4sys/include/{consts.h,types.h,err.h,ipc.h,__timeout.h} of L4Re
(https://github.com/kernkonzept/l4re-core, documented at https://l4re.org/doc/group__l4__api.html). Where this
model adds an operation L4 does not have, the number says so in its docstring.
"""
from __future__ import annotations

import enum

L4_CAP_SHIFT = 12
INVALID_CAP = (~0 << 11) & 0xFFFF_FFFF_FFFF_FFFF  #: L4_INVALID_CAP on 64-bit
MR_WORDS = 63  #: L4_UTCB_GENERIC_DATA_SIZE
MR_BYTES = MR_WORDS * 8
PAGE_SIZE = 4096
CHANNEL_FD = 3  #: the fd of a task's one channel to the kernel (a SOCK_SEQPACKET socket)
MAX_FRAME = 64 * 1024  #: the largest frame either side of a channel reads at once


def sel(index: int) -> int:
    """Capability selector of slot ``index`` (``index << L4_CAP_SHIFT``)."""
    return index << L4_CAP_SHIFT


def slot(selector: int) -> int:
    return selector >> L4_CAP_SHIFT


class IpcFlags(enum.IntFlag):
    """Low bits of the selector passed to l4_ipc(): the phases of one IPC."""

    NONE = 0
    SEND = 0x1
    RECV = 0x2
    OPEN_WAIT = 0x4
    REPLY = 0x8
    CALL = SEND | RECV
    WAIT = RECV | OPEN_WAIT
    SEND_AND_WAIT = SEND | RECV | OPEN_WAIT
    REPLY_AND_WAIT = REPLY | SEND | RECV | OPEN_WAIT


class IpcError(enum.IntEnum):
    """TCR error codes; odd = receive phase. errno = -(2000 + code)."""

    OK = 0
    SETIMEOUT = 0x02
    RETIMEOUT = 0x03
    ENOT_EXISTENT = 0x04
    SECANCELED = 0x06
    RECANCELED = 0x07
    SEMSGCUT = 0x08
    REMSGCUT = 0x09
    SESNDPFTO = 0x0A
    RESNDPFTO = 0x0B
    SERCVPFTO = 0x0C
    RERCVPFTO = 0x0D
    SEABORTED = 0x0E
    REABORTED = 0x0F
    SEMAPFAILED = 0x10
    REMAPFAILED = 0x11

    @property
    def errno(self) -> int:
        return -(2000 + self.value) if self else 0


class Err(enum.IntEnum):
    """l4_error_code_t (err.h); servers return them negated in the reply tag label."""

    EOK = 0
    EPERM = 1
    ENOENT = 2
    EIO = 5
    ENXIO = 6
    E2BIG = 7
    EAGAIN = 11
    ENOMEM = 12
    EACCESS = 13
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    ENODEV = 19
    EINVAL = 22
    ENOSPC = 28
    ERANGE = 34
    ENAMETOOLONG = 36
    ENOSYS = 38
    EBADPROTO = 39
    ENOREPLY = 1000
    EMSGTOOSHORT = 1001
    EMSGTOOLONG = 1002


class Proto(enum.IntEnum):
    """Message-tag protocol labels (types.h) and L4Re user-level protocols (protocols.h)."""

    NONE = 0
    IRQ = -1
    PAGE_FAULT = -2
    EXCEPTION = -5
    SIGMA0 = -6
    KOBJECT = -10
    TASK = -11
    THREAD = -12
    LOG = -13
    SCHEDULER = -14
    FACTORY = -15
    IRQ_SENDER = -18
    SEMAPHORE = -20
    DEBUGGER = -23
    DATASPACE = 0x4000
    NAMESPACE = 0x4001
    PARENT = 0x4002


# -- opcodes (MR[0]) of the kernel objects -----------------------------------------------

class FactoryOp(enum.IntEnum):
    """Factory::create: MR[0] is the protocol of the object to make (l4sys factory.h)."""

    TASK = Proto.TASK
    THREAD = Proto.THREAD
    FACTORY = Proto.FACTORY
    GATE = 0  # L4_PROTO_KOBJECT creation of an IPC gate uses protocol 0
    IRQ = Proto.IRQ_SENDER
    #: model addition: a tagged log (Vcon); MR[1] colour letter, MR[2] lines/s, MR[3] bytes/s, data = tag
    LOG = Proto.LOG


# Factory::create(TASK): MR[1] = capability-slot budget, MR[2] = memory-mapping budget (0 = the default).


class TaskOp(enum.IntEnum):
    MAP = 0  #: L4_TASK_MAP_OP: typed item in the message, needs W on the destination task cap
    UNMAP = 1  #: L4_TASK_UNMAP_OP: MR[1] = map mask, MR[2..] = fpage (kind, index, size, rights)
    CAP_INFO = 2  #: L4_TASK_CAP_INFO_OP: label 1 if MR[1]'s selector is a live cap
    RELEASE_CAP = 4  #: L4_TASK_RELEASE_CAP_OP: drop one own cap


class UnmapMask(enum.IntEnum):
    OTHER_SPACES = 0x0
    ALL_SPACES = 0x80000000
    DELETE_OBJ = 0xC0000000


class ThreadOp(enum.IntEnum):
    CONTROL = 0
    EX_REGS = 1  #: here: start the thread; the message data is the task's boot record (``bootrecord.BootRecord``)


class GateOp(enum.IntEnum):
    BIND_THREAD = 0x10  #: MR[1] = label (low 2 bits must be 0), MR[2] = thread selector
    GET_INFOS = 0x11  #: reply label = the gate's label
    #: model addition: the server is gone for good (its parent gave up on it, or it never bound):
    #: every waiting and every future caller gets L4_IPC_ENOT_EXISTENT until a thread binds again.
    #: Needs S, like BIND_THREAD (kernel_model/server_gone.py).
    SERVER_GONE = 0x12


class IrqOp(enum.IntEnum):
    TRIGGER = 2  #: L4_IRQ_OP_TRIGGER (send-only)
    BIND = 0  #: Irq_sender attach: MR[1] = label, MR[2] = thread selector; S on both caps
    DETACH = 1
    UNMASK = 4  #: EOI; a no-op for software IRQs


class LogOp(enum.IntEnum):
    WRITE = 0  #: MR[1] = byte count, then the UTF-8 bytes (at most MR_BYTES - 16)


class DebuggerOp(enum.IntEnum):
    SET_OBJECT_NAME = 0  #: jdb's l4_debugger_set_object_name: MR[1] = selector, data = name


# -- message tag, timeouts -----------------------------------------------------------------

class TagFlags(enum.IntFlag):
    NONE = 0
    TRANSFER_FPU = 0x1000
    SCHEDULE = 0x2000
    PROPAGATE = 0x4000
    ERROR = 0x8000


class MsgTag:
    """l4_msgtag_t: ``label << 16 | flags | items << 6 | words``; the label is signed.

    A value (compare, hash); a plain class with ``__slots__``, not a frozen dataclass: one is made or
    read for every message, and treated as immutable (``from_raw`` hands out shared instances).
    """

    __match_args__ = ("label", "words", "items", "flags")
    __slots__ = __match_args__

    def __init__(self, label: int = 0, words: int = 0, items: int = 0, flags: int = 0):
        self.label = label
        self.words = words
        self.items = items
        self.flags = flags

    def raw(self) -> int:
        words, items = self.words, self.items
        if not 0 <= words < 64 or not 0 <= items < 64 or words + 2 * items > MR_WORDS:
            raise ValueError("words + 2*items must fit in 63 message registers")
        return ((self.label << 16) | (self.flags & 0xF000) | (items << 6) | words) & 0xFFFF_FFFF_FFFF_FFFF

    @classmethod
    def from_raw(cls, raw: int) -> MsgTag:
        tag = _TAGS.get(raw) if cls is MsgTag else None
        if tag is not None:
            return tag
        label = raw >> 16
        if label >= 1 << 47:
            label -= 1 << 48
        tag = cls(label, raw & 0x3F, (raw >> 6) & 0x3F, raw & 0xF000)
        if cls is MsgTag and 0 <= raw < 1 << 64:
            if len(_TAGS) >= _TAG_CACHE:  # full (a task sending ever new tags): start again, the tags in
                _TAGS.clear()  # use come back at once
            _TAGS[raw] = tag
        return tag

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, MsgTag)
        return (self.label == other.label and self.words == other.words and self.items == other.items
                and self.flags == other.flags)

    def __hash__(self) -> int:
        return hash((self.label, self.words, self.items, self.flags))

    def __repr__(self) -> str:
        return f"MsgTag(label={self.label!r}, words={self.words!r}, items={self.items!r}, flags={self.flags!r})"


_TAG_CACHE = 1024  #: tags decoded once are shared (bounded: a task choosing tags cannot grow it)
_TAGS: dict[int, MsgTag] = {}


KERNEL_LABEL = 1 << 63
"""Labels with bit 63 set are the kernel's own: its notices (a task's exit) arrive with one.

Gate and IRQ labels bound by a task, and labels sent thread-to-thread, must be
below it (``-L4_EINVAL`` / ``L4_IPC_SEABORTED`` otherwise), so no task can
produce a message that looks like a kernel notice. (A model rule: Fiasco's
labels are full words; here the top half of the label space is reserved.)
"""
LABEL_LIMIT = 1 << 64

TIMEOUT_NEVER = 0  #: L4_IPC_TIMEOUT_NEVER (one 16-bit half)
TIMEOUT_ABSOLUTE = 0x8000  #: bit 15 of a half: absolute timeout (deadline in a buffer register)
TIMEOUT_ZERO = 0x0400  #: L4_IPC_TIMEOUT_0


def timeout_from_us(us: int | None) -> int:
    """Encode a relative timeout half: ``mantissa(10 bits) * 2**exponent(5 bits)`` µs.

    ``None`` = never, ``0`` = zero. Rounded up so a timeout never fires early.
    """
    if us is None:
        return TIMEOUT_NEVER
    if us <= 0:
        return TIMEOUT_ZERO
    exp = 0
    while us > 0x3FF:
        us = (us + 1) >> 1
        exp += 1
    if exp > 31:
        raise ValueError("timeout too long for l4_timeout_t")
    return (exp << 10) | us


def timeout_to_us(half: int) -> int | None:
    """Decode one 16-bit half; ``None`` means never. Absolute timeouts (bit 15) are not modelled."""
    if half == TIMEOUT_NEVER:
        return None
    if half & TIMEOUT_ABSOLUTE:
        raise ValueError("absolute timeouts are not supported by this model (the kernel refuses them)")
    return (half & 0x3FF) << ((half >> 10) & 0x1F)


def timeouts(send_us: int | None = None, recv_us: int | None = None) -> int:
    """l4_timeout_t pair: send half in the high 16 bits, receive half in the low 16 bits."""
    send = _HALVES.get(send_us)  # never and zero, the common halves, without the encoding loop
    recv = _HALVES.get(recv_us)
    if send is None:
        send = timeout_from_us(send_us)
    if recv is None:
        recv = timeout_from_us(recv_us)
    return (send << 16) | recv


_HALVES: dict[int | None, int] = {None: TIMEOUT_NEVER, 0: TIMEOUT_ZERO}


# Fixed slots every task started by Moe finds (an L4Re env); slots 1..7 follow the base caps.
class EnvSlot(enum.IntEnum):
    TASK = 1  #: L4RE_THIS_TASK_CAP
    FACTORY = 2  #: kernel factory (root tasks only)
    THREAD = 3  #: own main thread
    PAGER = 4  #: Moe: gate to Sigma0
    LOG = 5  #: own log object (root tasks: the kernel console)
    PARENT = 8  #: parent (Moe's app object for this task)
    MEM_ALLOC = 9  #: Moe's allocator, charged to this task's quota
    DEBUGGER = 10  #: jdb object (root tasks only)
    FIRST_NAMED = 16  #: named caps from the image start here


# -- L4Re user-level protocols served by Moe (l4re/include/{dataspace,namespace,parent}) -----

class DataspaceOp(enum.IntEnum):
    MAP = 0  #: MR[1] offset, MR[2] size, MR[3] flags (1 = writable); a memory item comes back
    SIZE = 1  #: reply MR[0] = size in bytes
    CLEAR = 2  #: zero the dataspace; needs W


class NamespaceOp(enum.IntEnum):
    QUERY = 0  #: data after MR[0] = the name; a capability item comes back


class ParentOp(enum.IntEnum):
    SIGNAL = 0  #: MR[1] = signal (0 = exited), MR[2] = value (exit code)


class Sigma0Op(enum.IntEnum):
    """MR[0] of the L4_PROTO_SIGMA0 protocol (sigma0.dox: ~0xFF + id)."""

    RAM = 0x60  #: MR[1] = size; a memory item (RWX) comes back, or -L4_ENOMEM
    KIP = 0xA0
    DEBUG_DUMP = 0xC0
