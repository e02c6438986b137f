"""The kinds of object an image declares: one entry per kind. Pure.

Everything the image schema (``image``), the analysis (``analysis``), the graph
(``graph``) and Moe's loader decide by the kind of an object is here: its image
keys, the rights that mean something on a cap to it, who "owns" it (the server
of a gate, the binder of an IRQ, the writer of a dataspace), which way
information flows between its holders (the analysis' edges), its lint checks,
its shape in the graph, and what Moe passes to the kernel factory to make one.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

from capabilities import lint
from capabilities.lint import Check, LintRule
from capabilities.rights import CapRights

BIND = CapRights.SVR | CapRights.S  #: what a gate server needs


class Flow(enum.Enum):
    """Which way information flows between the holders of one object."""

    NONE = "none"
    TO_OWNERS = "to-owners"  #: every holder -> every owner (calls to a gate's server, triggers to an IRQ's binder)
    FROM_OWNERS = "from-owners"  #: every owner -> every holder (a dataspace's writers to its readers)
    FROM_ROM = "from-rom"  #: Moe's boot modules -> every holder


@dataclasses.dataclass(frozen=True)
class ObjectKind:
    name: str  #: the image's ``type:`` value
    rights: CapRights  #: the rights that mean something on a cap to it (others are an image error)
    owns: Callable[[CapRights], bool]  #: does a cap with these rights make its holder an owner?
    flow: Flow
    edge: str  #: the analysis' edge kind for its flows (``analysis.EdgeKind`` value)
    style: tuple[str, str, str]  #: graph: shape, fill colour, line colour
    keys: tuple[str, ...] = ()  #: image keys besides ``type`` (``size``, ``quota`` required; ``direct`` optional)
    declarable: bool = True  #: False: only Moe's built-in object of this kind exists (``rom``)
    factory_args: tuple[str, ...] | None = None  #: Moe makes it with the kernel factory, passing these fields
    bold_owners: bool = False  #: graph: an owner's cap is drawn bold, pointing at the owner
    one_owner: LintRule | None = None  #: lint: the rule broken when two tasks can own it
    lint: Check | None = None  #: lint: the checks particular to this kind


def _nobody(rights: CapRights) -> bool:
    return False


IMAGE_KINDS: dict[str, ObjectKind] = {kind.name: kind for kind in (
    ObjectKind("gate", CapRights.parse("svr"), lambda r: r.covers(BIND), Flow.TO_OWNERS, "call",
               ("ellipse", "#dbe8fb", "#1f5fbf"), keys=("direct",), factory_args=("direct",), bold_owners=True,
               one_owner=LintRule.GATE_TWO_SERVERS, lint=lint.lint_gate),
    ObjectKind("irq", CapRights.R | CapRights.W | CapRights.S | CapRights.D, lambda r: CapRights.S in r,
               Flow.TO_OWNERS, "irq", ("diamond", "#fde7cf", "#d9730d"), factory_args=(), bold_owners=True,
               one_owner=LintRule.IRQ_TWO_BINDERS, lint=lint.lint_irq),
    ObjectKind("dataspace", CapRights.R | CapRights.W | CapRights.D, lambda r: CapRights.W in r,
               Flow.FROM_OWNERS, "memory", ("cylinder", "#d8f0d8", "#2b8a3e"), keys=("size",),
               lint=lint.lint_dataspace),
    ObjectKind("factory", CapRights.R | CapRights.S | CapRights.D, lambda r: CapRights.S in r, Flow.NONE, "",
               ("hexagon", "#eadcf5", "#7b3fa0"), keys=("quota",), factory_args=("quota",),
               lint=lint.lint_factory),
    ObjectKind("namespace", CapRights.R, _nobody, Flow.FROM_ROM, "rom", ("folder", "#ececec", "#666666"),
               declarable=False, lint=lint.lint_namespace),
)}
DECLARABLE = {name: kind for name, kind in IMAGE_KINDS.items() if kind.declarable}
