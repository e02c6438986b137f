"""What a running system looks like: per-task rows, service metrics, the summary; live or as plain lines.

The pure half: ``TaskRow`` and ``Metrics`` are read from the supervisor and from the console
events (``snapshot``; ``LiveSink`` consumes the same calls as every ``ConsoleSink``), and the
``render_*`` functions turn them into rich renderables or plain text. The I/O half is
``ViewSink``: a console sink that prints plain lines (not a terminal, ``--headless``) or keeps a
``rich.live.Live`` display up to date on a terminal.

Where the numbers come from (nothing here asks a task anything):

- pid, state, exit statuses, restarts: the supervisor's processes and its ``exited`` record
  (restarts = runs - 1; ``generation`` is shown when the kernel's Task has one, else the
  restart count stands in for it);
- IPCs made: ``Kernel.ipc_by_task``; IPCs served: ``Kernel.served_by_task`` (calls and sends delivered
  to the task, IRQ deliveries; not what travels on a direct channel, docs/direct-channels.md);
  denials: ``Kernel.violations``;
- memory: bytes mapped into the task's space (``Kernel.db``) against the image's ``memory``
  quota (what Moe's allocator may charge it; shared dataspaces count as mapped, not charged);
- service metrics: ``METRIC {json}`` lines a task writes to its log (the OEM gateway reports its
  crypto requests by status, the device certificate's state and expiry, and its outbox);
- supervision (the ``restart`` column): Moe's ``METRIC {"supervision": ...}`` lines (state,
  generation, restarts, next attempt; roottasks/moe/restarts.py), else the image's policy.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.live import Live

    from kernel_model.objects import Task

from capabilities.mapdb import Kind
from kernel_model.abi import Proto
from kernel_model.events import Violation
from kernel_model.host.console import RecordingConsole, strip_ansi
from kernel_model.logs import original

METRIC_PREFIX = "METRIC "
LOG_TAIL = 12
_PROTO = re.compile(r"\bproto (-?0x[0-9a-fA-F]+|-?\d+)")
_SERVED = re.compile(r"^(?:irq \S+ -> (\S+) label |(?!irq )\S+ -> (?!kernel )(\S+) (?:call|send) )")
COLOR_STYLE = {"n": "black", "r": "red", "g": "green", "y": "yellow", "b": "blue", "m": "magenta", "c": "cyan",
               "w": "white"}


class OutputConsole(Console):
    """stdout for the system's output. When the reader goes away (``| head``) rich would exit the
    process with status 1 and say nothing; this raises ``BrokenPipeError`` instead, so the boot
    shuts every task down and the CLI reports it (status 141 = 128 + SIGPIPE)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError("stdout closed by its reader")


def name_protocols(text: str) -> str:
    """``proto -13`` -> ``proto LOG``: a trace line with protocol names where the number is a known one."""
    def sub(m: re.Match) -> str:
        try:
            return f"proto {Proto(int(m.group(1), 0)).name}"
        except ValueError:
            return m.group(0)
    return _PROTO.sub(sub, text)


@dataclasses.dataclass
class TaskRow:
    name: str
    state: str  #: running, exited, not started
    pid: int | None = None
    generation: int | None = None  #: the kernel's task generation if it has one, else None
    restarts: int = 0
    ipcs: int = 0
    served: int = 0
    denied: int = 0
    memory_used: int = 0
    memory_quota: int | None = None
    memory_peak: int = 0  #: the most seen mapped at once (the summary shows this)
    exits: tuple[int, ...] = ()
    tag: str = ""
    color: str = "w"
    supervision: str = ""  #: the restart column: policy, or Moe's live state (restarting in N s, gave up)

    def as_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if k not in ("tag", "color")}


class LiveSink(RecordingConsole):
    """Records like every sink and counts what the view needs: served IPCs, metrics, recent log lines."""

    def __init__(self, tag_to_task: dict[str, str] | None = None, *, show_trace: bool = False):
        super().__init__()
        self.tag_to_task = tag_to_task or {}
        self.show_trace = show_trace
        self.served: dict[str, int] = {}
        self.metrics: dict[str, dict] = {}  # task -> its last METRIC payload
        self.metric_times: dict[str, deque] = {}  # task -> (monotonic s, crypto ops) samples, for ops/s
        self.tail: deque[tuple[str, str]] = deque(maxlen=LOG_TAIL)  # (task, plain line)
        self.clock: Callable[[], float] = time.monotonic
        self.peak: dict[str, int] = {}
        self.supervision: dict[str, dict] = {}  # task -> Moe's last supervision state for it
        self.supervision_at = 0.0  # when it came (the clock's seconds): next attempts count from here

    def split(self, line: str) -> tuple[str, str]:
        """(task, text) of a Moe log line ``tag     | text``."""
        plain = strip_ansi(line)
        tag, sep, text = plain.partition("| ")
        if not sep:
            return "", plain
        tag = tag.strip()
        return self.tag_to_task.get(tag, tag), text

    def log_line(self, line: str) -> None:
        task, text = self.split(line)
        if text.startswith(METRIC_PREFIX):
            try:
                payload = json.loads(original(text[len(METRIC_PREFIX):]))  # the kernel escaped it
            except ValueError:
                payload = None
            if isinstance(payload, dict) and task == "moe" and isinstance(payload.get("supervision"), dict):
                self._supervision(payload["supervision"])
                return
            if isinstance(payload, dict):
                self.metrics[task] = payload
                ops = _crypto_ops(payload)
                if ops is not None:
                    samples = self.metric_times.setdefault(task, deque(maxlen=8))
                    samples.append((self.clock(), ops))
                return  # data for the view, not a line for people
        super().log_line(line)
        self.tail.append((task, strip_ansi(line)))
        self.on_line(line)

    def _supervision(self, state: dict) -> None:
        changed = {name: st for name, st in state.items()
                   if isinstance(st, dict) and self.supervision.get(name) != st}
        self.supervision = {name: st for name, st in state.items() if isinstance(st, dict)}
        self.supervision_at = self.clock()
        if self.show_trace:  # --trace: every change of Moe's supervision state, as a trace line
            for name, st in changed.items():
                text = (f"supervision: {name} {supervision_text(st, 0.0, why=True)}, "
                        f"generation {st.get('generation')}, restarts {st.get('restarts')} ({st.get('policy')})")
                super().trace(text)
                self.on_trace(text)

    def restart_cell(self, name: str, policy: str) -> str:
        st = self.supervision.get(name)
        if st is None:
            return policy
        return supervision_text(st, self.clock() - self.supervision_at)

    def trace(self, text: str) -> None:
        text = name_protocols(text)
        m = _SERVED.match(text)
        if m:
            target = m.group(1) or m.group(2)
            self.served[target] = self.served.get(target, 0) + 1
        if self.show_trace:
            super().trace(text)
            self.on_trace(text)

    def kernel(self, message: str) -> None:
        super().kernel(message)
        self.tail.append(("kernel", f"kernel  | {message}"))
        self.on_kernel(message)

    def violation(self, v: Violation) -> None:
        super().violation(v)
        self.tail.append(("kernel", f"kernel  | {v}"))
        self.on_violation(v)

    # -- where output goes (ViewSink prints; this class only records) --
    def on_line(self, line: str) -> None: ...
    def on_kernel(self, message: str) -> None: ...
    def on_violation(self, v: Violation) -> None: ...
    def on_trace(self, text: str) -> None: ...

    def ops_per_s(self, task: str) -> float | None:
        samples = self.metric_times.get(task)
        if not samples or len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return None
        return (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])


def supervision_text(st: dict, since_s: float, *, why: bool = False) -> str:
    """One task's supervision state in a few words: ``restarting in 0.4 s``, ``gave up: ...``, ``running``."""
    state = str(st.get("state", "?"))
    if state == "restarting" and isinstance(st.get("next_attempt_s"), (int, float)):
        left = st["next_attempt_s"] - since_s
        if left <= 0:
            return "restarting now"
        return f"restarting in {left:.1f} s" if left >= 1 else f"restarting in {left * 1000:.0f} ms"
    if state == "gave up":
        return f"gave up ({st.get('gave_up')})" if st.get("gave_up") and why else "gave up"
    return state


def _crypto_ops(payload: dict) -> int | None:
    crypto = payload.get("crypto")
    if isinstance(crypto, dict) and isinstance(crypto.get("ops"), int):
        return crypto["ops"]
    return None


def snapshot(sup, sink: LiveSink) -> list[TaskRow]:
    """One row per task of the image (plus sigma0 and moe), started or not. Read-only."""
    k = sup.kernel
    image = sup.loaded.image
    exits: dict[str, list[int]] = {}
    for name, status in sup.exited:
        exits.setdefault(name, []).append(status)
    denied: dict[str, int] = {}
    for v in k.violations:
        denied[v.task] = denied.get(v.task, 0) + 1
    live = {p.task.name: p for p in sup.procs.values() if p.status is None}
    tasks_by_name: dict[str, Task] = {}
    for t in k.tasks.values():  # the live incarnation, else the latest one
        best = tasks_by_name.get(t.name)
        if best is None or (t.alive, getattr(t, "generation", 0)) >= (best.alive, getattr(best, "generation", 0)):
            tasks_by_name[t.name] = t
    rows = []
    decls = {t.name: t for t in image.tasks}
    for name in ["sigma0", "moe"] + [t.name for t in image.tasks]:
        proc = live.get(name)
        ran = exits.get(name, [])
        task = tasks_by_name.get(name)
        if proc is not None:
            state = "running"
        elif ran:
            state = "exited"
        else:
            state = "not started"
        used = 0
        if task is not None and task.alive:
            used = sum(node.size for node in k.db.in_space(task.space, Kind.MEMORY))
        decl = decls.get(name)
        sink.peak[name] = max(sink.peak.get(name, 0), used)
        generation = getattr(task, "generation", None) if task is not None else None
        rows.append(TaskRow(
            name=name, state=state, pid=proc.pid if proc else None,
            generation=generation if isinstance(generation, int) else None,
            restarts=max(0, len(ran) - (0 if proc is not None else 1)) if ran else 0,
            ipcs=k.ipc_by_task.get(name, 0), served=k.served_by_task.get(name, 0), denied=denied.get(name, 0),
            memory_used=used, memory_quota=decl.memory if decl else None, memory_peak=sink.peak[name],
            exits=tuple(ran),
            tag=decl.log.tag if decl else name, color=decl.log.color if decl else "w",
            supervision=sink.restart_cell(name, decl.restart_policy.policy) if decl else "-"))
    return rows


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


TASK_COLUMNS = ("task", "state", "pid", "generation", "restarts", "restart", "IPCs made", "served", "denied",
                "memory / quota")
SUMMARY_COLUMNS = TASK_COLUMNS[:-1] + ("peak memory / quota",)
RIGHT = ("pid", "generation", "restarts", "IPCs made", "served", "denied")


def task_cells(row: TaskRow, *, peak: bool = False) -> tuple[str, ...]:
    state = row.state if row.state != "exited" else f"exited {row.exits[-1]}"
    style = "green" if row.state == "running" else ("red" if row.exits and row.exits[-1] != 0 else "dim")
    gen = str(row.generation) if row.generation is not None else f"{row.restarts}*"
    return (f"[{_color(row.color)}]{escape(row.name)}[/]", f"[{style}]{escape(state)}[/]",
            str(row.pid) if row.pid else "-", gen, str(row.restarts), escape(row.supervision or "-"),
            str(row.ipcs), str(row.served),
            f"[red]{row.denied}[/]" if row.denied else "0",
            f"{_size(row.memory_peak if peak else row.memory_used)} / {_size(row.memory_quota)}")


def _color(letter: str) -> str:
    style = COLOR_STYLE.get(letter.lower(), "white")
    return f"bold {style}" if letter.isupper() else style


def render_tasks(rows: list[TaskRow]) -> Table:
    table = Table(show_edge=False, title="tasks", title_justify="left")
    for col in TASK_COLUMNS:
        table.add_column(col, justify="right" if col in RIGHT else "left", no_wrap=True)
    for row in rows:
        table.add_row(*task_cells(row))
    return table


def service_lines(sink: LiveSink, now: float | None = None) -> list[str]:
    """The services as markup lines: crypto ops/s and status counts, the device certificate, the outbox."""
    out = []
    for task, payload in sink.metrics.items():
        crypto = payload.get("crypto")
        if isinstance(crypto, dict):
            rate = sink.ops_per_s(task)
            statuses = crypto.get("status") or {}
            counts = ", ".join(f"{escape(str(k))} {v}" for k, v in sorted(statuses.items()))
            out.append(f"[bold]crypto service[/] (as {escape(task)} sees it): {crypto.get('ops', 0)} requests"
                       + (f", {rate:.1f} ops/s" if rate is not None else "")
                       + (f"; status: {counts}" if counts else ""))
        cert = payload.get("cert")
        if isinstance(cert, dict):
            state = str(cert.get("state", "?"))
            expiry = cert.get("not_after")
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expiry)) if isinstance(expiry, int) and expiry \
                else "-"
            style = "green" if state == "VALID" else "red"
            out.append(f"[bold]device certificate[/]: [{style}]{escape(state)}[/], expires {when}"
                       + (f"; {escape(str(cert['subject']))}" if cert.get("subject") else ""))
        outbox = payload.get("outbox")
        if isinstance(outbox, dict):
            out.append(f"[bold]outbox[/]: {outbox.get('batches', 0)} sealed batches, {outbox.get('readings', 0)} "
                       f"readings, last sequence number {outbox.get('seq', '-')}")
    return out


def render_live(rows: list[TaskRow], sink: LiveSink, colors: dict[str, str]) -> Group:
    parts: list[Any] = [render_tasks(rows)]
    parts += [Text.from_markup(line) for line in service_lines(sink)]
    if sink.tail:
        parts.append(Text(""))
        for task, line in sink.tail:
            parts.append(Text(line, style=_color(colors.get(task, "w")) if task != "kernel" else "bold",
                              no_wrap=True, overflow="ellipsis"))
    return Group(*parts)


def summary_data(sup, sink: LiveSink, code: int, duration_s: float) -> dict:
    rows = snapshot(sup, sink)
    return {
        "image": sup.loaded.image.name,
        "file": str(sup.loaded.path),
        "exit_status": code,
        "duration_s": round(duration_s, 3),
        "ipcs": sup.kernel.ipc_count,
        "denied": len(sup.kernel.violations),
        "tasks": [r.as_json() for r in rows],
        "metrics": sink.metrics,
    }


class ViewSink(LiveSink):
    """Prints: plain lines (``live=None``) or through a ``rich.live.Live`` kept up to date by ``refresh``."""

    def __init__(self, out: Console, tag_to_task: dict[str, str], *, show_trace: bool = False, live: bool = False,
                 quiet_violations: bool = False):
        super().__init__(tag_to_task, show_trace=show_trace)
        self.out = out
        self.live: Live | None = None
        self.quiet_violations = quiet_violations
        self._wants_live = live
        self.sup = None

    # plain lines: printed as they come (soft wrap: never broken at the console width)
    def on_line(self, line: str) -> None:
        if self.live is None:
            self.out.print(Text.from_ansi(line), soft_wrap=True)

    def on_kernel(self, message: str) -> None:
        if self.live is None:
            self.out.print(f"[bold]kernel[/]  | {escape(message)}", soft_wrap=True)

    def on_violation(self, v: Violation) -> None:
        if self.live is None and not self.quiet_violations:
            self.out.print(f"[bold red]kernel[/]  | [red]{escape(str(v))}[/]", soft_wrap=True)

    def on_trace(self, text: str) -> None:
        if self.live is None:
            self.out.print(f"[dim]ipc     | {escape(text)}[/]", soft_wrap=True)
        else:
            self.tail.append(("kernel", f"ipc     | {text}"))

    def start_live(self, sup) -> None:
        self.sup = sup
        if self._wants_live and self.live is None:
            from rich.live import Live
            self.live = Live(console=self.out, auto_refresh=False, transient=True, redirect_stdout=False,
                             redirect_stderr=False)
            self.live.start()
            self.refresh()

    def refresh(self) -> None:
        if self.live is not None and self.sup is not None:
            colors = {t.name: t.log.color for t in self.sup.loaded.image.tasks}
            self.live.update(render_live(snapshot(self.sup, self), self, colors), refresh=True)

    def stop_live(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
