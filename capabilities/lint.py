"""Lint rules on an image's declared caps, and the checks particular to one kind of object. Pure.

``analysis.lint`` runs the checks common to every object; each kind's own checks are named by its
entry in ``capabilities.kinds``.
"""
from __future__ import annotations

import enum
from collections.abc import Callable

from capabilities.rights import CapRights

Holder = tuple[str, str, CapRights]  #: (task, cap name, rights) of one declared cap


class Severity(enum.IntEnum):
    INFO = 0  #: worth knowing, nothing to fix
    WARNING = 1  #: more authority than needed, or a cap nobody is on the other end of
    ERROR = 2  #: fail-open: a task can take over or break someone else's channel; check exits 1


class LintRule(enum.Enum):
    """Lint rules on the *declared* caps: (id, severity, what it means)."""

    GATE_TWO_SERVERS = ("gate-two-servers", Severity.ERROR, "two tasks can bind one gate; the last bind gets the calls")
    SVR_CANNOT_BIND = ("svr-cannot-bind", Severity.ERROR, "server right c without s: the task never binds the gate")
    CLIENT_S = ("client-s", Severity.WARNING, "a gate client holds s: S in its label, and the caps it sends keep S")
    SHARED_DELETE = ("shared-delete", Severity.WARNING, "d on an object others use, held by a task not serving it")
    GATE_NO_SERVER = ("gate-no-server", Severity.ERROR, "a gate nobody can bind: every call blocks until timeout")
    GATE_NO_CLIENT = ("gate-no-client", Severity.WARNING, "a gate served but held by nobody else: unused")
    IRQ_TWO_BINDERS = ("irq-two-binders", Severity.ERROR, "two tasks can bind one IRQ; the last bind takes it")
    IRQ_NO_BINDER = ("irq-no-binder", Severity.ERROR, "an IRQ nobody can bind: every trigger is lost")
    IRQ_NO_TRIGGER = ("irq-no-trigger", Severity.WARNING, "an IRQ only its binder holds: nobody else triggers it")
    IRQ_WRITE = ("irq-write", Severity.INFO, "w on an IRQ grants nothing: the kernel checks no W on IRQs")
    DS_UNSHARED = ("ds-unshared", Severity.INFO, "a dataspace only one task holds: private memory, not a channel")
    DS_NO_WRITER = ("ds-no-writer", Severity.WARNING, "a shared dataspace nobody can write: it carries nothing")
    DS_ALL_WRITERS = ("ds-all-writers", Severity.INFO, "every holder can write a shared dataspace: flow both ways")
    ROM_WRITE = ("rom-write", Severity.ERROR, "w on Moe's read-only rom namespace")
    FACTORY_NO_CREATE = ("factory-no-create", Severity.WARNING, "a factory cap without s: it can create nothing")
    OBJECT_UNHELD = ("object-unheld", Severity.WARNING, "a declared object no task holds")

    def __init__(self, rule_id: str, severity: Severity, meaning: str):
        self.id, self.severity, self.meaning = rule_id, severity, meaning


Add = Callable[[LintRule, "Holder | None", str, str], None]  #: report (rule, the cap at fault, object, message)
Check = Callable[[str, list[Holder], list[str], list[Holder], list[str], Add], None]
"""One kind's checks: (object, its holders, their tasks, its owners, the owners' tasks, add)."""


def lint_gate(obj: str, hs: list[Holder], tasks: list[str], owners: list[Holder], owner_tasks: list[str],
              add: Add) -> None:
    for h in hs:
        if CapRights.SVR in h[2] and CapRights.S not in h[2]:
            add(LintRule.SVR_CANNOT_BIND, h, obj, f"{h[0]} holds c on gate {obj!r} without s: it can never bind "
                                              f"it, and c is server authority a client must not have")
        elif CapRights.SVR not in h[2] and CapRights.S in h[2]:
            add(LintRule.CLIENT_S, h, obj, f"client {h[0]} holds s on gate {obj!r}: its label shows S and the "
                                       f"caps it sends to the server keep S; give it rw")
    if not owners:
        add(LintRule.GATE_NO_SERVER, hs[0], obj, f"no task can bind gate {obj!r} (needs c and s): "
                                             f"calls from {', '.join(tasks)} block until they time out")
    elif tasks == owner_tasks[:1]:
        add(LintRule.GATE_NO_CLIENT, owners[0], obj, f"only {tasks[0]} holds gate {obj!r}: nobody calls it")


def lint_irq(obj: str, hs: list[Holder], tasks: list[str], owners: list[Holder], owner_tasks: list[str],
             add: Add) -> None:
    if not owners:
        add(LintRule.IRQ_NO_BINDER, hs[0], obj, f"no task can bind IRQ {obj!r} (needs s): "
                                            f"triggers from {', '.join(tasks)} go nowhere")
    elif tasks == owner_tasks[:1]:
        add(LintRule.IRQ_NO_TRIGGER, owners[0], obj, f"only its binder {tasks[0]} holds IRQ {obj!r}")
    for h in hs:
        if CapRights.W in h[2]:
            add(LintRule.IRQ_WRITE, h, obj, f"w on IRQ {obj!r} grants {h[0]} nothing (trigger needs only the "
                                        f"cap, bind needs s)")


def lint_dataspace(obj: str, hs: list[Holder], tasks: list[str], owners: list[Holder], owner_tasks: list[str],
                   add: Add) -> None:
    writers = [h for h in hs if CapRights.W in h[2]]
    if len(tasks) == 1:
        add(LintRule.DS_UNSHARED, hs[0], obj, f"only {tasks[0]} holds dataspace {obj!r}")
    elif not writers:
        add(LintRule.DS_NO_WRITER, hs[0], obj, f"nobody can write dataspace {obj!r}: {', '.join(tasks)} "
                                           f"read only zeros")
    elif set(tasks) == {h[0] for h in writers}:
        add(LintRule.DS_ALL_WRITERS, hs[0], obj, f"every holder of dataspace {obj!r} can write it "
                                             f"({', '.join(tasks)}); map r where a task only reads")


def lint_namespace(obj: str, hs: list[Holder], tasks: list[str], owners: list[Holder], owner_tasks: list[str],
                   add: Add) -> None:
    for h in hs:
        if CapRights.W in h[2]:
            add(LintRule.ROM_WRITE, h, obj, f"{h[0]} holds w on the read-only rom namespace")


def lint_factory(obj: str, hs: list[Holder], tasks: list[str], owners: list[Holder], owner_tasks: list[str],
                 add: Add) -> None:
    for h in hs:
        if CapRights.S not in h[2]:
            add(LintRule.FACTORY_NO_CREATE, h, obj, f"{h[0]}'s cap to factory {obj!r} lacks s: it can "
                                                f"create nothing")
