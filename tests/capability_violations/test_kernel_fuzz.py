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

import os
import struct

from hypothesis import HealthCheck, settings, strategies as st

from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kernel_model.abi import INVALID_CAP, sel

from kernel_world import Arena, frame
PROTOS = [0, 0x100, 0x4000, 0x4001, 0x4002, -1, -2, -5, -10, -11, -12, -13, -15, -18, -23, -(1 << 47), (1 << 47) - 1]
TIMEOUTS = [0, 0x0400_0400, 0x0400_0000, 0x0000_0400, 0x8000_0000, 0x0000_8000, 0x8000_8000, 0x0401_0401]
WORDS = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 0x10, 0x11, 1 << 63, (1 << 64) - 1, sel(16), sel(20),
                                   INVALID_CAP, 0x80000000, 0xC0000000]), st.integers(0, (1 << 64) - 1))
SELECTORS = st.one_of(st.sampled_from([sel(i) for i in range(0, 32)] + [INVALID_CAP]), st.integers(0, (1 << 64) - 1))
ITEM = st.tuples(st.sampled_from([1, 2]), st.sampled_from([0, 0, 1]), st.sampled_from([0x4, 0x6, 0x7, 0x2F, 0x27]),
                 st.just(0), st.one_of(st.sampled_from([sel(16), sel(17), 0x4000_0000, 0x4000_1000]), WORDS),
                 st.sampled_from([1, 4096, 8192, 0]), st.sampled_from([0, 0x1000, sel(30)]))


@st.composite
def invocations(draw) -> bytes:
    n_words = draw(st.integers(0, 8))
    data = b"".join(struct.pack("<Q", draw(WORDS)) for _ in range(n_words))
    if draw(st.booleans()):
        data += draw(st.binary(max_size=24))
    items = draw(st.lists(ITEM, max_size=3))
    proto = draw(st.sampled_from(PROTOS))
    tag = ((proto << 16) | (len(items) << 6) | min(len(data) // 8, 63 - 2 * len(items))) & ((1 << 64) - 1)
    if draw(st.integers(0, 9)) == 0:
        tag = draw(st.integers(0, (1 << 64) - 1))
    window = draw(st.sampled_from([(0, 0), (0x4000_0000, 0x2000), (0x4000_0000, 0x1000), (0x5000_0000, 0x1000)]))
    return frame(draw(st.integers(0, 15)), draw(SELECTORS), tag, timeout=draw(st.sampled_from(TIMEOUTS)),
                 label=draw(WORDS), rcv_obj=draw(st.sampled_from([INVALID_CAP, sel(30), sel(31), sel(5), 0])),
                 mem=window, items=items, data=data)


FRAMES = st.one_of(invocations(), st.binary(max_size=200))


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
