"""``l4emu check`` and ``l4emu graph``: the I/O half of capabilities.analysis and capabilities.graph.

Each function loads the image with ``load_image`` (an invalid image raises ``ImageError``, which
the CLI prints with exit status 2), prints with rich, and returns an exit status:

- ``check_image``: 0 if no finding is an error, 1 otherwise.
- ``explain``: 0 if a path exists, 1 if not ("no path"), 2 for a name that is neither a task nor an object.
- ``graph_image``: 0 when the file is written, 1 if ``dot`` is missing or fails, 2 for an unknown format.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from capabilities.analysis import ROM_NODE, Analysis
from capabilities.graph import render_dot
from capabilities.lint import Severity
from kernel_model.host.images import load_image
from l4emu.tables import emit_table
from protocols.exit_codes import ExitCode

FORMATS = ("dot", "svg", "png", "pdf")
SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def check_image(path: str | Path, console: Console) -> int:
    """Validate, analyse and print reach, authority closure, flows and findings; 1 if any error."""
    loaded = load_image(path, missing_ok=True)
    analysis = Analysis(loaded.image)
    render_report(analysis, console)
    for problem in loaded.missing:  # the analysis does not read modules; boot would refuse to start
        console.print(f"[cyan]note[/]: {escape(str(problem))} (boot needs it; e.g. the EST CA's trust anchor is "
                      f"created by the CA's first start: `l4emu est-ca ca-cert` or `make boot`)", soft_wrap=True)
    return ExitCode.FAILED if any(f.severity is Severity.ERROR for f in analysis.findings) else ExitCode.OK


def render_report(a: Analysis, console: Console) -> None:
    image = a.image
    ncaps = sum(len(t.caps) for t in image.tasks)
    console.print(f"[bold]{escape(image.name)}[/] ({escape(image.file)}): {len(image.tasks)} tasks, "
                  f"{len(image.objects)} objects, {ncaps} declared caps")

    console.print("\n[bold]reachability[/]: who can invoke, notify or write to whom (directly, declared caps)")
    rows: list[tuple[str, ...]] = []
    for e in a.edges:
        caps = f"{e.source_cap} -> {e.target_cap}" if e.source_cap else str(e.target_cap)
        rows.append((escape(e.source), e.kind.value, escape(e.target), f"{e.object_type} {escape(e.object)}",
                     escape(caps)))
    emit_table(console, ("from", "kind", "to", "through", "caps (source -> target)"), rows)
    direct = {(e.source, e.target) for e in a.edges}
    gained = list(dict.fromkeys((e.source, e.target) for e in a.derived_edges if (e.source, e.target) not in direct))
    if gained:
        console.print("[yellow]reach gained with obtainable caps[/] (--why FROM TO shows how): "
                      + escape(", ".join(f"{src} -> {dst}" for src, dst in gained)))

    closure = [(t, obj, rights, w) for t in a.tasks for (obj, rights), w in a.obtainable(t).items()]
    if closure:
        console.print("\n[bold]authority closure[/]: caps a task can obtain beyond its declared ones")
        emit_table(console, ("task", "can obtain", "witness"),
                   [(escape(t), escape(f"{obj}:{rights.letters()}"), escape(str(w).split(" via: ", 1)[1]))
                    for t, obj, rights, w in closure])
    else:
        console.print("\n[bold]authority closure[/]: no task can obtain anything beyond its declared caps")

    console.print("\n[bold]information flow[/]: who can influence whom (transitively)")
    rows = []
    order = {t: i for i, t in enumerate(a.tasks)}
    for src in (ROM_NODE,) + a.tasks:
        reached = sorted((t for t in a.influence_set(src) if t in order), key=order.__getitem__)
        if src != ROM_NODE or reached:
            rows.append((escape(src), escape(", ".join(reached)) or "[dim]nobody[/]"))
    emit_table(console, ("from", "can influence"), rows)

    if a.findings:
        console.print("\n[bold]findings[/]")
        rows = []
        for f in a.findings:
            where = f"tasks.{f.task}.caps.{f.cap}" if f.task else f"objects.{f.object}"
            style = SEVERITY_STYLE[f.severity]
            rows.append((f"[{style}]{f.severity.name.lower()}[/]", f.rule.id, escape(where), escape(f.message)))
        emit_table(console, ("severity", "rule", "where", "message"), rows)
    count = {s: sum(f.severity is s for f in a.findings) for s in Severity}
    console.print(f"\n{count[Severity.ERROR]} errors, {count[Severity.WARNING]} warnings, {count[Severity.INFO]} notes")


def explain(path: str | Path, a: str, b: str, console: Console) -> int:
    """Print why ``a`` can reach, influence or obtain ``b`` (a witness path), or "no path".

    ``a`` is a task (or ``rom`` for the boot modules); ``b`` is a task (reach and flow) or an
    object (what caps to it ``a`` can obtain).
    """
    analysis = Analysis(load_image(path).image)
    source = ROM_NODE if a in ("rom", ROM_NODE) and a not in analysis.tasks else a
    if source not in analysis.tasks and source != ROM_NODE:
        console.print(f"[bold red]error[/]: no task {escape(a)!r} (tasks: {escape(', '.join(analysis.tasks))})")
        return ExitCode.BAD_INPUT
    if b not in analysis.tasks and b not in analysis.objects:
        console.print(f"[bold red]error[/]: no task or object {escape(b)!r} (tasks: "
                      f"{escape(', '.join(analysis.tasks))}; objects: {escape(', '.join(analysis.objects))})")
        return ExitCode.BAD_INPUT
    if source == ROM_NODE and b not in analysis.tasks:
        console.print(f"[bold red]error[/]: from rom, ask about a task (tasks: {escape(', '.join(analysis.tasks))})")
        return ExitCode.BAD_INPUT
    found = False
    if b in analysis.objects and source in analysis.tasks:
        caps = [h for h in analysis.holdings(source) if h.object == b]
        for h in caps:
            w = h.witness or analysis.can_obtain(source, b, h.rights)
            console.print(escape(str(w)))
        if not caps:
            console.print(f"obtain: no path: {escape(source)} can never obtain a cap to {escape(b)}")
        found = found or bool(caps)
    if b in analysis.tasks:
        if source in analysis.tasks:
            reach = analysis.can_reach(source, b)
            console.print(escape(str(reach)) if reach else
                          f"reach: no path: {escape(source)} cannot call, notify or write to {escape(b)} directly, "
                          f"even with the caps it can obtain")
            found = found or reach is not None
        flow = analysis.flows(source, b)
        console.print(escape(str(flow)) if flow else f"flow: no path: nothing {escape(source)} does can influence "
                                                     f"{escape(b)}")
        found = found or flow is not None
    return 0 if found else 1


def graph_image(path: str | Path, out_path: str | Path, fmt: str | None = None, console: Console | None = None,
                *, obtainable: bool = False) -> int:
    """Write the capability graph: DOT text, or SVG/PNG/PDF through Graphviz ``dot``.

    ``fmt`` defaults to the suffix of ``out_path``; ``out_path`` ``-`` prints DOT to the console.
    Without ``dot`` on PATH the DOT text is written next to ``out_path`` (suffix ``.dot``) and 1 is returned.
    """
    console = console or Console(highlight=False)
    image = load_image(path).image
    text = render_dot(image, Analysis(image), obtainable=obtainable)
    if str(out_path) == "-":
        console.out(text, end="", highlight=False)
        return 0
    out = Path(out_path)
    fmt = (fmt or out.suffix.lstrip(".") or "dot").lower()
    fmt = "dot" if fmt == "gv" else fmt
    if fmt not in FORMATS:
        console.print(f"[bold red]error[/]: unknown graph format {escape(fmt)!r} "
                      f"(expected one of: {', '.join(FORMATS)})")
        return ExitCode.BAD_INPUT
    if fmt == "dot":
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {escape(str(out))}")
        return 0
    dot = shutil.which("dot")
    if dot is None:
        fallback = out.with_suffix(".dot")
        fallback.write_text(text, encoding="utf-8")
        console.print(f"[bold red]error[/]: Graphviz 'dot' is not on PATH, so no {fmt.upper()} was drawn; wrote the "
                      f"DOT text to {escape(str(fallback))} instead (install graphviz, e.g. apt-get install graphviz)")
        return 1
    done = subprocess.run([dot, f"-T{fmt}", "-o", str(out)], input=text.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        console.print(f"[bold red]error[/]: dot failed ({done.returncode}): "
                      f"{escape(done.stderr.decode(errors='replace').strip())}")
        return 1
    console.print(f"wrote {escape(str(out))}")
    return 0
