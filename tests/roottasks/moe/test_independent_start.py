"""Moe starts the image's tasks one after another in the image's order, without waiting for a started
task to get anywhere (bind its gate, serve, make a call): the image declares no start dependencies
(every object a task holds exists before any task starts; a call to a server that is not serving yet
waits in the kernel), so every task's start-up runs alongside the others'."""
from __future__ import annotations

from kernel_model.objects import Irq, ThreadState

IMAGE = """
name: independent
run: {until: [second]}
objects:
  go: {type: irq}
  svc: {type: gate}
tasks:
  first:
    program: testing.adversary
    args: ["await:go"]
    caps: {go: "go:rs", svc: "svc:svr"}
  second:
    program: testing.adversary
    args: ["ids", "exit:0"]
"""


def test_a_task_that_never_gets_going_holds_up_no_other(boot):
    system = boot(IMAGE, confine=False)
    assert system.run(timeout=60) == 0, system.console.text()  # second ran to its end ...
    first = next(t for t in system.kernel.tasks.values() if t.name == "first")
    assert first.alive and first.threads[0].state is ThreadState.RECEIVING  # ... while first never served
    assert isinstance(first.threads[0].recv_from, Irq)  # (it waits for an IRQ nobody triggers)
    second = next(t for t in system.kernel.tasks.values() if t.name == "second")
    assert first.id < second.id  # started in the image's order
    assert system.exited("second") == 0 and system.exited("first") is None
