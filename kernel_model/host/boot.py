"""``l4emu boot``: validate, boot, run, summarise. The CLI's one library call."""
from __future__ import annotations

from pathlib import Path

import contextlib

from rich.console import Console
from rich.table import Table

from kernel_model.host.console import RichConsole
from kernel_model.host.images import PROJECT_ROOT, load_image
from kernel_model.host.supervisor import Supervisor, now_us
from kernel_model.objects import ThreadState


def boot_complete(sup: Supervisor) -> bool:
    """Every task of the image has been started and Moe sits in its open wait."""
    k = sup.kernel
    if k.moe is None or not k.moe.alive:
        return False
    names = {t.name for t in sup.loaded.image.tasks}
    started = {t.name for t in k.tasks.values() if t.started and t.name in names}
    moe_thread = k.moe.threads[0]
    return started == names and moe_thread.state is ThreadState.RECEIVING and moe_thread.recv_from is None


def boot_image(path: Path, *, dump_caps: bool = False, confine: bool = True, timeout_s: float | None = None,
               console: Console | None = None, est_ca: str | None = None, trace: bool = False,
               summary: bool = True, est_server=None) -> int:
    """``est_ca``: "HOST:PORT", or "" for the image's own EST endpoint; ``est_server``: a
    `hil.est_ca.binding.EstTarget` (see hil/est_ca/binding.py: the image, the CA and the CLI agree)."""
    out = console or Console(highlight=False, soft_wrap=True)
    sink = RichConsole(out)
    with contextlib.ExitStack() as stack:
        if est_ca is not None or est_server is not None:
            _validate(path)  # an invalid image is reported against its own file, before anything starts
            path = stack.enter_context(start_est(path, est_ca, est_server, sink))
        return _boot(path, sink, out, dump_caps=dump_caps, confine=confine, timeout_s=timeout_s, trace=trace,
                     summary=summary)


def _validate(path: Path) -> None:
    """The image's own checks (file, line, field), without reading its boot modules: the trust
    anchor module may be created by the CA that is about to start."""
    from capabilities.image import ImageError, Problem, parse_image
    from kernel_model.host.images import program_exists

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError([Problem(str(path), 1, 1, "<file>", f"cannot read the image: {exc}")]) from None
    parse_image(text, str(path), program_exists)


@contextlib.contextmanager
def start_est(path: Path, est_ca: str | None, target, sink: RichConsole):
    """The device's environment: the development EST CA (started first) and/or the image bound to
    the EST server the CLI names; yields the image path to boot."""
    from hil.est_ca import EstCaError
    from hil.est_ca.binding import EstBindingError, bind

    try:
        with bind(path, est_ca=est_ca, target=target, state_dir=PROJECT_ROOT / "var" / "est-ca",
                  announce=sink.kernel) as bound:
            yield bound
    except (EstBindingError, EstCaError) as exc:
        raise BootError(str(exc)) from None


class BootError(Exception):
    """Something around the boot (not the image) is wrong; nothing was started."""


def _boot(path: Path, sink: RichConsole, out: Console, *, dump_caps: bool, confine: bool,
          timeout_s: float | None, trace: bool, summary: bool) -> int:
    loaded = load_image(path)  # raises ImageError before anything starts
    from kernel_model.host.confinement import policy_for
    from kernel_model.host.keystore_devices import keystore_devices
    sup = Supervisor(loaded, sink, confinement=policy_for if confine else None)
    with keystore_devices(loaded, sup.run_dir, sink.kernel, BootError), sup:  # TPM/HSM up first, down last
        sup.kernel.trace = trace
        sup.handle_signals()
        sup.start()
        code = None
        if dump_caps:
            code = sup.run(timeout_s=timeout_s, until=lambda: boot_complete(sup))
            if code is None and boot_complete(sup):
                from kernel_model.cli import render_dump
                sink.kernel(f"boot complete after {(now_us() - sup.boot_started_us) / 1000:.0f} ms")
                render_dump(sup.kernel.dump(), out)
        if code is None:
            code = sup.run(timeout_s=timeout_s)
        if code is None:
            sink.kernel(f"timeout after {timeout_s} s: stopping the system")
            code = 124
        denied = len(sup.kernel.violations)
        sink.kernel(f"system stopped with status {code}; {sup.kernel.ipc_count} IPCs, {denied} denied operation(s)")
        if summary:
            out.print(summary_table(sup))
        return code


def summary_table(sup: Supervisor) -> Table:
    """Per task: IPCs it made, operations denied to it, how it ended (tasks that ran more than once: each run)."""
    k = sup.kernel
    denied: dict[str, int] = {}
    for v in k.violations:
        denied[v.task] = denied.get(v.task, 0) + 1
    ended: dict[str, list[str]] = {}
    for name, status in sup.exited:
        ended.setdefault(name, []).append(str(status))
    table = Table(title="tasks", title_justify="left", show_edge=False)
    for col, justify in (("task", "left"), ("IPCs", "right"), ("denied", "right"), ("exit status", "left")):
        table.add_column(col, justify=justify)
    for name in sorted(set(k.ipc_by_task) | set(ended) | set(denied), key=lambda n: (n not in ("sigma0", "moe"), n)):
        count = denied.get(name, 0)
        table.add_row(name, str(k.ipc_by_task.get(name, 0)), f"[red]{count}[/]" if count else "0",
                      ", ".join(ended.get(name, ["running at shutdown"])))
    return table
