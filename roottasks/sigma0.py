"""Sigma0, the root pager: owns all RAM and hands it out first come, first served.

Runs as a task like any other; Moe reaches it through its pager gate (label
0x40) with the L4_PROTO_SIGMA0 protocol. A RAM request names a size; the
answer is a memory map item (RWX) of frames nobody else owns, or -L4_ENOMEM.
"""
from __future__ import annotations

from capabilities.rights import MemRights
from kernel_model.abi import PAGE_SIZE, Err, Proto, Sigma0Op
from kernel_model.wire import Item


class FrameAllocator:
    """First-fit allocator over ``[base, base + size)`` in whole pages. Pure."""

    def __init__(self, base: int, size: int):
        self.free: list[tuple[int, int]] = [(base, size)]  # (start, length), sorted, coalesced
        self.total = size

    def alloc(self, size: int) -> int | None:
        size = -(-size // PAGE_SIZE) * PAGE_SIZE
        for i, (start, length) in enumerate(self.free):
            if length >= size:
                if length == size:
                    del self.free[i]
                else:
                    self.free[i] = (start + size, length - size)
                return start
        return None

    @property
    def available(self) -> int:
        return sum(length for _, length in self.free)


def main(env) -> int:
    ram = env.record.ram
    if ram is None:
        return 1  # only the kernel starts Sigma0, always with its RAM
    frames = FrameAllocator(ram.base, ram.size)
    msg = env.wait()
    while True:
        if not msg.ok:
            msg = env.wait()
            continue
        if msg.proto == Proto.SIGMA0 and msg.has_words(2) and msg.word(0) == Sigma0Op.RAM:
            size = -(-msg.word(1) // PAGE_SIZE) * PAGE_SIZE
            addr = frames.alloc(size) if size > 0 else None
            if addr is None:
                msg = env.reply_and_wait(-Err.ENOMEM)
            else:
                rights = MemRights.R | MemRights.W | MemRights.X
                msg = env.reply_and_wait(0, items=[Item.mem(addr, size, rights)])
        else:
            msg = env.reply_and_wait(-Err.EBADPROTO)
