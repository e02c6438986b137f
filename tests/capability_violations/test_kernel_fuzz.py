"""Random frame sequences from several hostile tasks against a kernel serving honest ones (issue 9).

A hypothesis state machine: attackers write random frames (random bytes, and
well-formed-looking invocations whose every field is drawn from interesting and
random values) on their channels, die and come back, while time passes; after every
step the honest server and client must still work. Invariants:

- the kernel never raises, and never needs its last-resort boundary (no kernel-bug event);
- every result it delivers encodes into a frame (what the host sends next);
- the honest tasks' capability tables are unchanged and their call still succeeds;
- the mapping database stays within the attackers' budgets; only attackers are killed.

``make fuzz`` runs the coverage-guided counterpart (tests/fuzz/) for long runs.
"""
from __future__ import annotations

import json
import os
import struct

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kernel_model.abi import INVALID_CAP, IpcFlags, sel
from kernel_world import Arena, frame

PROTOS = [0, 0x100, 0x4000, 0x4001, 0x4002, -1, -2, -5, -10, -11, -12, -13, -15, -18, -23, -(1 << 47), (1 << 47) - 1]
TIMEOUTS = st.one_of(st.sampled_from([0x0400_0400, 0x0400_0000, 0x0000_0400, 0x0401_0401, 0x0400_0401]),
                     st.sampled_from([0, 0x8000_0000, 0x0000_8000, 0x8000_8000]), st.integers(0, (1 << 32) - 1))
SMALL = [0, 1, 2, 3, 4, 0x10, 0x11, 0x40, sel(3), sel(16), sel(17), sel(20), sel(21), sel(25), INVALID_CAP,
         0x80000000, 0xC0000000, 0x4000_0000, 0x4000_1000, 0x1000, 0x2000]
WORDS = st.one_of(st.sampled_from(SMALL), st.sampled_from([1 << 63, (1 << 64) - 1, (1 << 63) - 4, -13 & (2**64 - 1),
                                                           -11 & (2**64 - 1), -12 & (2**64 - 1), -18 & (2**64 - 1)]),
                  st.integers(0, (1 << 64) - 1))
OWN = [sel(i) for i in (1, 3, 5, 16, 17, 18, 19, 20, 21, 22, 25)]
SELECTORS = st.one_of(st.sampled_from(OWN), st.sampled_from([sel(i) for i in range(32)] + [INVALID_CAP]),
                      st.integers(0, (1 << 64) - 1))
ITEM = st.tuples(st.sampled_from([1, 2]), st.sampled_from([0, 0, 1]), st.sampled_from([0x4, 0x6, 0x7, 0x2F, 0x27]),
                 st.just(0), st.one_of(st.sampled_from([sel(16), sel(17), sel(18), sel(20), 0x4000_0000, 0x4000_1000]),
                                       WORDS),
                 st.sampled_from([1, 4096, 8192, 0]), st.sampled_from([0, 0x1000, sel(30), sel(22)]))
WINDOWS = st.sampled_from([(0, 0), (0x4000_0000, 0x2000), (0x4000_0000, 0x1000), (0x5000_0000, 0x1000),
                           (0x5000_0000, 0x2000), (0x6000_0000, 0x1000)])
#: what a kernel object's operation looks like: (selector, protocol, first word)
OPS = [(sel(5), -13, 0), (sel(19), -15, -11 & (2**64 - 1)), (sel(19), -15, -12 & (2**64 - 1)), (sel(19), -15, 0),
       (sel(19), -15, -18 & (2**64 - 1)), (sel(19), -15, -15 & (2**64 - 1)), (sel(19), -15, -13 & (2**64 - 1)),
       (sel(17), -10, 0x10), (sel(17), -10, 0x11), (sel(18), -18, 0), (sel(18), -1, 2), (sel(18), -18, 1),
       (sel(1), -11, 0), (sel(1), -11, 1), (sel(1), -11, 2), (sel(1), -11, 4), (sel(21), -11, 0), (sel(22), -12, 1),
       (sel(3), -12, 0), (sel(20), 0x100, 0), (sel(16), 0x100, 1)]


@st.composite
def invocations(draw) -> bytes:
    """A frame that mostly decodes: a kernel operation, IPC between the attackers, or anything at all."""
    kind = draw(st.integers(0, 3))
    if kind <= 1:  # a kernel object's operation, arguments drawn from interesting words
        dest, proto, first = draw(st.sampled_from(OPS))
        flags = draw(st.sampled_from([IpcFlags.CALL, IpcFlags.CALL, IpcFlags.SEND, IpcFlags.SEND_AND_WAIT]))
    else:
        dest, proto, first = draw(SELECTORS), draw(st.sampled_from(PROTOS)), draw(WORDS)
        flags = draw(st.integers(0, 15))
    rest = draw(st.lists(WORDS, max_size=6))
    data = b"".join(struct.pack("<Q", w) for w in [first, *rest])
    if draw(st.booleans()):
        data += draw(st.text(max_size=40)).encode() + draw(st.sampled_from([b"", b"\n"]))  # log text, records
    items = draw(st.lists(ITEM, max_size=3))
    tag = ((proto << 16) | (len(items) << 6) | min(len(data) // 8, 63 - 2 * len(items))) & ((1 << 64) - 1)
    if draw(st.integers(0, 19)) == 0:
        tag = draw(st.integers(0, (1 << 64) - 1))
    return frame(flags, dest, tag, timeout=draw(TIMEOUTS), label=draw(WORDS),
                 rcv_obj=draw(st.sampled_from([INVALID_CAP, sel(21), sel(22), sel(30), sel(5), 0])),
                 mem=draw(WINDOWS), items=items, data=data)


FRAMES = st.one_of(invocations(), invocations(), invocations(), st.binary(max_size=200))


class KernelUnderAttack(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.arena = Arena()

    @rule(who=st.integers(0, 1), data=FRAMES)
    def attack(self, who, data):
        self.arena.step(who, data)

    @rule(who=st.integers(0, 1), data=st.lists(FRAMES, min_size=2, max_size=6))
    def burst(self, who, data):
        for d in data:
            self.arena.step(who, d)

    @rule(window=WINDOWS, rcv=st.sampled_from([INVALID_CAP, sel(22), sel(30)]), items=st.lists(ITEM, max_size=3),
          back=st.lists(ITEM, max_size=2), grant=st.booleans())
    def attackers_exchange(self, window, rcv, items, back, grant):
        """evil1 waits with receive buffers, evil0 calls it with typed items, evil1 replies with others."""
        def inv(flags, dest, its, **kw):
            its = [(k, int(grant), r, 0, i, s, d) for k, _g, r, _p, i, s, d in its]
            return frame(flags, dest, (0x100 << 16) | (len(its) << 6), items=its, **kw)
        self.arena.step(1, inv(IpcFlags.WAIT, INVALID_CAP, [], rcv_obj=rcv, mem=window))
        self.arena.step(0, inv(IpcFlags.CALL, sel(20), items, rcv_obj=rcv, mem=window, timeout=0x0400_0000))
        self.arena.step(1, inv(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, back, timeout=0x0400_0000))

    @rule(who=st.integers(0, 1), text=st.text(max_size=120), call=st.booleans())
    def attacker_logs(self, who, text, call):
        raw = text.encode()
        data = struct.pack("<QQ", 0, len(raw)) + raw
        flags = IpcFlags.CALL if call else IpcFlags.SEND
        self.arena.step(who, frame(flags, sel(5), ((-13 << 16) | min(len(data) // 8, 63)) & (2**64 - 1), data=data))

    @rule(who=st.integers(0, 1), name=st.sampled_from(["evil0", "server", "x", "../x", "a" * 70]),
          program=st.sampled_from(["testing.adversary", "os;rm", ""]), junk=st.binary(max_size=16))
    def attacker_starts_a_task(self, who, name, program, junk):
        """Factory: a task, a thread bound to it, then EX_REGS with a boot record (valid or not)."""
        fab = ((-15 << 16) | 2) & (2**64 - 1)
        self.arena.step(who, frame(IpcFlags.CALL, sel(19), fab, rcv_obj=sel(24),
                                   data=struct.pack("<QQ", -11 & (2**64 - 1), 0)))
        self.arena.step(who, frame(IpcFlags.CALL, sel(19), fab, rcv_obj=sel(25),
                                   data=struct.pack("<QQ", -12 & (2**64 - 1), sel(24))))
        record = json.dumps({"program": program, "name": name}).encode() + junk
        data = struct.pack("<Q", 1) + record
        self.arena.step(who, frame(IpcFlags.CALL, sel(25), ((-12 << 16) | min(len(data) // 8, 63)) & (2**64 - 1),
                                   data=data))

    @rule(us=st.sampled_from([1, 1000, 1_000_000, 5_000_000]))
    def time_passes(self, us):
        self.arena.tick(us)

    @rule(who=st.integers(0, 1), status=st.integers(0, 255))
    def attacker_dies_and_comes_back(self, who, status):
        self.arena.respawn(who, status)

    @rule()
    def honest_call(self):
        self.arena.honest_call()

    @invariant()
    def kernel_is_sound(self):
        self.arena.check()


KernelUnderAttack.TestCase.settings = settings(max_examples=int(os.environ.get("L4EMU_FUZZ_EXAMPLES", "40")),
                                               stateful_step_count=30, deadline=None,
                                               suppress_health_check=[HealthCheck.too_slow])
test_kernel_under_attack = KernelUnderAttack.TestCase
