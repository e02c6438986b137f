"""Fair service: which task's frame the kernel handles next (pure; the event loop asks it).

The event loop reads at most one frame per ready channel per turn (a task cannot get ahead by
writing many frames), and serves the ready channels in order of the service each task has had
recently: the task that has had the least goes first. A flooding task is therefore served after
every honest task that is waiting in the same turn, so an honest call waits behind at most the one
frame the kernel is handling when it arrives. Still work-conserving: alone, a flooder is served at
once. "Recently" is counted in frames, not time: every ``window`` frames all counts are halved, so
history fades without a clock.

Kernel service is not the only thing a flooder takes: its process also competes for the host's
CPUs with the honest tasks. ``over_share()`` names the tasks that have had more than ``factor``
times the recent frames of *every* other task (and at least ``minimum``); the event loop lowers
their CPU priority (nice 19) and makes their next frame wait for another task's, until they are
back within it. Compared with the busiest other task, not the mean: a client and its server
trade frames one for one, so a busy pair is never over its share however idle the rest are.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)  #: who is served (the event loop: a channel's id)


class FairScheduler(Generic[K]):
    def __init__(self, window: int = 1024, factor: float = 2.0, minimum: int = 32):
        self.window, self.factor, self.minimum = window, factor, minimum
        self.served: dict[K, int] = {}
        self._since_decay = 0

    def order(self, ready: Iterable[K]) -> list[K]:
        """This turn's order: least recently served first; ties keep the order given."""
        ready = list(ready)
        if len(ready) < 2:  # the common turn: one channel ready
            return ready
        served = self.served
        # sorted() is stable: ties keep the order given
        return sorted(ready, key=lambda who: served.get(who, 0))

    def charge(self, who: K, frames: int = 1) -> None:
        """``who`` was served ``frames`` frames."""
        self.served[who] = self.served.get(who, 0) + frames
        self._since_decay += frames
        if self._since_decay >= self.window:
            self._since_decay = 0
            self.served = {k: v // 2 for k, v in self.served.items() if v // 2}

    def forget(self, who: K) -> None:
        self.served.pop(who, None)

    def over_share(self) -> set[K]:
        """Tasks that have had more than ``factor`` x the recent frames of the busiest other task (never
        the only task served: alone, a task takes what it likes)."""
        counts = sorted(self.served.values(), reverse=True)
        if len(counts) < 2:
            return set()
        top, second = counts[0], counts[1]
        if top < self.minimum or (self.factor >= 1 and top <= self.factor * second):
            return set()  # nobody is: the busiest is within its share, and every other is below the busiest
        return {who for who, n in self.served.items()
                if n >= self.minimum and n > self.factor * (second if n == top else top)}
