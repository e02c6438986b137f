"""Coverage-guided fuzzing (atheris) of the frame decoder and the kernel's syscall entry. ``make fuzz``.

Two targets, each a plain function of the input bytes so that pytest can replay any
input without atheris (tests/fuzz/test_crashers.py replays every file in ``crashers/``):

- ``decode``: ``wire.decode_invocation`` returns an ``Invocation`` or raises ``WireError``,
  nothing else; what it returns re-encodes to the same bytes.
- ``kernel``: the input is a script for ``kernel_world.Arena`` (two attackers next to an
  honest server and client): each step picks an attacker frame, a burst, time passing,
  an attacker dying and coming back, an honest call, or the attackers exchanging typed items;
  ``Arena.check()`` after each.

Run:  python tests/fuzz/fuzz_kernel.py decode|kernel [libFuzzer options, e.g. -max_total_time=600 CORPUS_DIR]
A crash leaves ``crash-<sha1>`` in the working directory: copy it into ``tests/fuzz/crashers/``
(named ``decode-...`` or ``kernel-...``) so it stays a regression test, then fix the kernel.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # kernel_world, when run as a script

import struct

from kernel_model.abi import INVALID_CAP, IpcFlags, sel
from kernel_model.wire import WireError, decode_invocation
from kernel_world import Arena, frame


def decode(data: bytes) -> None:
    try:
        inv = decode_invocation(data)
    except WireError:
        return
    assert inv.encode() == data, "a decoded frame re-encodes differently"


class _Bytes:
    """Draws small integers and byte strings from the input (a minimal FuzzedDataProvider)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def left(self) -> bool:
        return self.pos < len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


_SELECTORS = [sel(i) for i in (0, 1, 3, 5, 8, 16, 17, 18, 19, 20, 30)] + [INVALID_CAP, 1 << 63]
_PROTOS = [0, 0x100, 0x4000, 0x4002, -1, -10, -11, -12, -13, -15, -18, -23, -(1 << 47)]
_TIMEOUTS = [0, 0x0400_0400, 0x0400_0000, 0x0000_0400, 0x8000_0000, 0x0000_8000, 0x0401_0401]
_WORDS = [0, 1, 2, 3, 4, 0x10, 0x11, 0x40, 1 << 63, (1 << 64) - 1, sel(16), sel(17), sel(20), INVALID_CAP,
          0x80000000, 0xC0000000, 0x4000_0000, 0x1000, 0x2000, -11 & (2**64 - 1), -12 & (2**64 - 1)]
_WINDOWS = [(0, 0), (0x4000_0000, 0x2000), (0x4000_0000, 0x1000), (0x5000_0000, 0x1000), (0x1001, 0x1000)]


def _items(src: _Bytes) -> list[tuple]:
    items = []
    for _ in range(src.byte() % 4):
        b = src.byte()
        items.append((1 + (b & 1), (b >> 1) & 1, (0x4, 0x6, 0x7, 0x2F)[(b >> 2) & 3], 0,
                      _WORDS[src.byte() % len(_WORDS)], (1, 0x1000, 0x2000, 0)[(b >> 4) & 3],
                      (0, 0x1000, sel(30), 0x3000)[(b >> 6) & 3]))
    return items


def _invocation(src: _Bytes) -> bytes:
    flags = src.byte() % 16
    dest = _SELECTORS[src.byte() % len(_SELECTORS)]
    proto = _PROTOS[src.byte() % len(_PROTOS)]
    data = b"".join(struct.pack("<Q", _WORDS[src.byte() % len(_WORDS)]) for _ in range(src.byte() % 9))
    items = _items(src)
    words = min(len(data) // 8, 63 - 2 * len(items))
    tag = ((proto << 16) | (len(items) << 6) | words) & (2**64 - 1)
    return frame(flags, dest, tag, timeout=_TIMEOUTS[src.byte() % len(_TIMEOUTS)],
                 label=_WORDS[src.byte() % len(_WORDS)], rcv_obj=(INVALID_CAP, sel(30), sel(5), 0)[src.byte() % 4],
                 mem=_WINDOWS[src.byte() % len(_WINDOWS)], items=items, data=data)


def kernel(data: bytes) -> None:
    arena = Arena()
    src = _Bytes(data)
    steps = 0
    while src.left() and steps < 64:
        steps += 1
        op = src.byte() % 8
        who = src.byte() % 2
        if op <= 1:  # one raw frame; its length is the next two bytes
            n = src.byte() | (src.byte() << 8)
            arena.step(who, src.take(n % 1024))
        elif op <= 3:  # one well-formed-looking invocation, every field drawn from interesting values
            arena.step(who, _invocation(src))
        elif op == 4:
            arena.tick((1, 1000, 1_000_000, 5_000_000)[src.byte() % 4])
        elif op == 5:
            arena.respawn(who, src.byte())
        elif op == 6:
            arena.honest_call()
        else:  # the attackers exchange typed items through the gate evil1 serves
            window = _WINDOWS[src.byte() % len(_WINDOWS)]
            rcv = (INVALID_CAP, sel(22), sel(30))[src.byte() % 3]
            arena.step(1, frame(IpcFlags.WAIT, INVALID_CAP, 0x100 << 16, rcv_obj=rcv, mem=window))
            give, back = _items(src), _items(src)
            arena.step(0, frame(IpcFlags.CALL, sel(20), (0x100 << 16) | (len(give) << 6), items=give, rcv_obj=rcv,
                                mem=window, timeout=0x0400_0000))
            arena.step(1, frame(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, len(back) << 6, items=back,
                                timeout=0x0400_0000))
        arena.check()


TARGETS = {"decode": decode, "kernel": kernel}


def main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {'|'.join(TARGETS)} [libFuzzer options]")
    target = TARGETS[argv[1]]
    atheris.instrument_all()  # the kernel modules are imported already: instrument what is loaded
    atheris.Setup([argv[0]] + argv[2:], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
