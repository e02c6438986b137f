"""The kernel fuzzer (test_kernel_fuzz.py) with a direct channel on every gate: hostile frame sequences open,
replace and cut channels, and after every step no channel survives whose path changed (every record still
passes ``direct.check``), every cut comes ahead of the step's other effects, and every opening names
live tasks and the gate's bound thread."""
from __future__ import annotations

import os

from capability_violations.test_kernel_fuzz import KernelUnderAttack  # type: ignore[import-not-found]
from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant, rule

from kernel_model.abi import INVALID_CAP, IpcFlags, sel
from kernel_model.direct import DirectMode, check
from kernel_model.events import DirectCut, DirectOpen
from kernel_world import frame, words


class KernelUnderAttackWithDirectChannels(KernelUnderAttack):
    def __init__(self):
        super().__init__()
        self.arena.w.k.directs.mode = DirectMode.ALL

    @rule()
    def attackers_call_each_other(self):
        """A call that opens a channel: evil1 waits on the pair gate it serves, evil0 calls it, evil1 replies."""
        self.arena.step(1, frame(IpcFlags.WAIT, INVALID_CAP, 0))
        self.arena.step(0, frame(IpcFlags.CALL, sel(20), (0x100 << 16) | 1, data=words(1)))
        self.arena.step(1, frame(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, 0, timeout=0x0400_0000))

    @rule()
    def an_attacker_calls_the_honest_server(self):
        self.arena.step(0, frame(IpcFlags.CALL, sel(16), (0x100 << 16) | 1, data=words(2)))

    @invariant()
    def channels_are_sound(self):
        k = self.arena.w.k
        busy = {n.space for mem in k._retiring.values() for n in k.db.holders(mem)}
        for chan in k.directs.channels.values():
            assert check(chan, k.db, busy) is None, chan
        effects = self.arena.w.effects
        kinds = [isinstance(e, DirectCut) for e in effects]
        assert kinds == sorted(kinds, reverse=True), "a cut after another effect of its step"
        for eff in effects:
            if isinstance(eff, DirectOpen):
                assert eff.client.alive and eff.server.alive and eff.handle in k.directs.channels


KernelUnderAttackWithDirectChannels.TestCase.settings = settings(
    max_examples=int(os.environ.get("L4EMU_FUZZ_EXAMPLES", "40")), stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_kernel_under_attack_with_direct_channels = KernelUnderAttackWithDirectChannels.TestCase
