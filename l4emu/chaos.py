"""Chaos on demand: kill tasks at seeded random points (``l4emu boot --chaos SEED``, ``make reliability``).

The pure half is ``schedule``: from a seed and the target task names, an endless, deterministic
sequence of faults ``(at, task)``; ``at`` is in whatever unit the caller measures progress in
(seconds since boot for ``l4emu boot --chaos``; kernel IPCs for the reliability scenario, so the
points do not depend on the machine's speed). The same seed and targets give the same faults.

The I/O half is ``Chaos``: it holds a supervisor and a progress function, and when a fault is
due it kills the target's process with SIGKILL -- what the kernel sees when a task crashes, and
what ``kill -9`` does in the field. Only the image's own tasks are targets unless the caller
names Sigma0 or Moe explicitly. A target that is not running at that moment (it is being
restarted) is skipped and counted. ``recovered`` counts the kills after which a later
incarnation of that task came up (the kernel's task generation grew).
"""
from __future__ import annotations

import dataclasses
import random
import signal
from collections.abc import Callable, Iterator, Sequence

ROOT_TASKS = ("sigma0", "moe")


@dataclasses.dataclass(frozen=True)
class Fault:
    at: float  #: when, in the caller's unit of progress
    task: str  #: whose process is killed


def schedule(seed: int, targets: Sequence[str], *, first: float, mean_gap: float) -> Iterator[Fault]:
    """Faults at ``first`` + seeded gaps (uniform in [mean_gap/2, 3*mean_gap/2]); targets drawn uniformly."""
    if not targets:
        return
    rng = random.Random(seed)
    names = sorted(set(targets))
    at = first
    while True:
        yield Fault(round(at, 3), rng.choice(names))
        at += rng.uniform(mean_gap / 2, mean_gap * 3 / 2)


def targets_for(image_tasks: Sequence[str], asked: Sequence[str] | None) -> list[str]:
    """The image's tasks (never Sigma0/Moe), or exactly the ones asked for (which may name them)."""
    if not asked:
        return list(image_tasks)
    unknown = [t for t in asked if t not in image_tasks and t not in ROOT_TASKS]
    if unknown:
        raise ValueError(f"--chaos-tasks: no task {', '.join(map(repr, unknown))} in the image "
                         f"(tasks: {', '.join(image_tasks)}; sigma0 and moe only when named)")
    return list(asked)


@dataclasses.dataclass
class Kill:
    fault: Fault
    pid: int | None  #: None: the task was not running (skipped)
    generation: int = 0  #: the kernel's generation of the incarnation killed


class Chaos:
    """Carries out a fault schedule against a running ``Supervisor``."""

    def __init__(self, sup, faults: Iterator[Fault], progress: Callable[[], float],
                 say: Callable[[str], None] = lambda text: None, limit: int | None = None,
                 wait_for_target: bool = False):
        self.sup, self.progress, self.say, self.limit = sup, progress, say, limit
        self.wait_for_target = wait_for_target  # a due fault whose target is down waits for it (else: skipped)
        self._faults = faults
        self._next: Fault | None = next(faults, None)
        self.kills: list[Kill] = []

    @property
    def done(self) -> bool:
        return self._next is None or (self.limit is not None and len(self.kills) >= self.limit)

    def next_at(self) -> float | None:
        nxt = self._next
        return None if nxt is None or self.done else nxt.at

    def due(self) -> bool:
        nxt = self._next
        if nxt is None or self.done or self.progress() < nxt.at:
            return False
        return not self.wait_for_target or self._running(nxt.task)

    def tick(self) -> int:
        """Inject every fault that is due; how many were injected."""
        made = 0
        while self.due():  # with wait_for_target, a target being restarted is killed once it is back
            fault, self._next = self._next, next(self._faults, None)
            assert fault is not None  # due(): a fault is next
            self.kills.append(self._kill(fault))
            made += 1
        return made

    def _running(self, name: str) -> bool:
        try:
            proc = self.sup.process(name)
        except KeyError:
            return False
        return proc.task.alive

    def _kill(self, fault: Fault) -> Kill:
        k = self.sup.kernel
        try:
            proc = self.sup.process(fault.task)
        except KeyError:
            self.say(f"chaos: fault {len(self.kills) + 1} at {fault.at:g}: {fault.task} is not running (skipped)")
            return Kill(fault, None)
        generation = getattr(proc.task, "generation", 0)
        try:
            signal.pidfd_send_signal(proc.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            return Kill(fault, None)
        if fault.task in ROOT_TASKS or proc.task in (k.sigma0, k.moe):
            self.say(f"chaos: fault {len(self.kills) + 1} at {fault.at:g}: killed {fault.task} (pid {proc.pid})")
        else:
            self.say(f"chaos: fault {len(self.kills) + 1} at {fault.at:g}: killed {fault.task} "
                     f"(pid {proc.pid}, generation {generation})")
        return Kill(fault, proc.pid, generation)

    @property
    def injected(self) -> int:
        return sum(1 for kill in self.kills if kill.pid is not None)

    def recovered(self) -> int:
        """Kills after which a later incarnation of the task started."""
        newest: dict[str, int] = {}
        for task in self.sup.kernel.tasks.values():
            if task.started:
                newest[task.name] = max(newest.get(task.name, 0), getattr(task, "generation", 0))
        return sum(1 for kill in self.kills
                   if kill.pid is not None and newest.get(kill.fault.task, 0) > kill.generation)
