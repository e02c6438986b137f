"""The capability graph of an image as Graphviz DOT text (capDL-tool's ``--dot``, https://github.com/seL4/capdl).

Tasks are boxes; objects have one shape and colour per type (gate, irq, dataspace, factory,
Moe's rom namespace). Each declared cap is an edge labelled with its name and rights, pointing
the way requests travel: a client points at its gate and the gate at its server (bold), a
trigger holder at its IRQ and the IRQ at its binder (bold), a dataspace both ways to a writer and
towards a reader. Given an ``Analysis``, caps with an error finding are red and, on request, caps a
task can obtain beyond its declared ones are drawn dashed. Pure, and deterministic: image order throughout.
"""
from __future__ import annotations

from capabilities.analysis import Analysis, Holding
from capabilities.image import BUILTIN_OBJECTS, Image
from capabilities.kinds import IMAGE_KINDS, Flow
from capabilities.lint import Severity

#: object type -> (shape, fill, line colour)
STYLE = {name: kind.style for name, kind in IMAGE_KINDS.items()}
ERROR_COLOUR = "#d62728"


def quote(text: str) -> str:
    """A DOT double-quoted string (backslash and quote escaped, newlines as ``\\n``)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**kw: str | None) -> str:
    return ", ".join(f"{k}={quote(v)}" for k, v in kw.items() if v is not None)


def _cap_edge(h: Holding, otype: str, colour: str, label: str, *, obtained: bool, error: bool) -> str:
    """One cap as an edge, pointing the way requests travel; server/binder caps bold."""
    task, obj = quote(f"task:{h.task}"), quote(f"obj:{h.object}")
    kind = IMAGE_KINDS[otype]
    owner = kind.owns(h.rights)
    serves = kind.bold_owners and owner
    inbound = serves or kind.flow is Flow.FROM_ROM or (kind.flow is Flow.FROM_OWNERS and not owner)
    src, dst = (obj, task) if inbound else (task, obj)
    style = ",".join(s for s in ("dashed" if obtained else "", "bold" if serves else "") if s) or None
    return f"  {src} -> {dst} [" + _attrs(
        label=label, color=ERROR_COLOUR if error else colour, fontcolor=ERROR_COLOUR if error else None,
        style=style, penwidth="2" if serves else None,
        dir="both" if kind.flow is Flow.FROM_OWNERS and owner else None) + "];"


def render_dot(image: Image, analysis: Analysis | None = None, *, obtainable: bool = False) -> str:
    """DOT text for ``image``. With ``analysis``: caps with an error finding in red, and with
    ``obtainable`` also the caps each task can obtain beyond its declared ones (dashed)."""
    types = {o.name: o.type for o in image.objects} | dict(BUILTIN_OBJECTS)
    held = {c.object for t in image.tasks for c in t.caps}
    errors = {(f.task, f.cap) for f in (analysis.findings if analysis else ()) if f.severity is Severity.ERROR}
    lines = [
        f"digraph {quote(image.name)} {{",
        "  graph [" + _attrs(rankdir="LR", label=f"{image.name}: capability graph", labelloc="t",
                             fontname="Helvetica") + "];",
        "  node [" + _attrs(fontname="Helvetica", fontsize="11") + "];",
        "  edge [" + _attrs(fontname="Helvetica", fontsize="9") + "];",
    ]
    for t in image.tasks:
        lines.append(f"  {quote('task:' + t.name)} [" + _attrs(shape="box", style="rounded,filled", fillcolor="#f7f7f7",
                                                               label=f"{t.name}\n{t.program}") + "];")
    for obj, otype in types.items():
        if obj in BUILTIN_OBJECTS and obj not in held and not image.modules:
            continue
        shape, fill, line = STYLE[otype]
        rom = IMAGE_KINDS[otype].flow is Flow.FROM_ROM
        extra = f"\nmodules: {', '.join(m.name for m in image.modules)}" if rom and \
            image.modules else ""
        lines.append(f"  {quote('obj:' + obj)} [" + _attrs(shape=shape, style="filled", fillcolor=fill, color=line,
                                                           label=f"{obj}\n{otype}{extra}") + "];")
    for t in image.tasks:
        for c in t.caps:
            h = Holding(t.name, c.object, c.rights, c.name)
            colour = STYLE[types[c.object]][2]
            lines.append(_cap_edge(h, types[c.object], colour, f"{c.name}\n{c.rights.letters()}", obtained=False,
                                   error=(t.name, c.name) in errors))
    if analysis is not None and obtainable:
        for t in image.tasks:
            for (obj, rights), _ in analysis.obtainable(t.name).items():
                h = Holding(t.name, obj, rights)
                lines.append(_cap_edge(h, types[obj], STYLE[types[obj]][2], f"obtainable\n{rights.letters()}",
                                       obtained=True, error=False))
    lines.append("}")
    return "\n".join(lines) + "\n"
