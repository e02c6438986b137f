"""``l4emu boot``: validate, boot, run, summarise. The CLI's one library call."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import time
from pathlib import Path

from rich.console import Console

from durable.atomic import atomic_write
from kernel_model.host.images import PROJECT_ROOT, LoadedImage, load_image
from kernel_model.host.supervisor import Supervisor, now_us
from kernel_model.host.zygote import prestart as prestart_template
from kernel_model.objects import ThreadState
from l4emu.live import (
    RIGHT,
    SUMMARY_COLUMNS,
    OutputConsole,
    ViewSink,
    service_lines,
    snapshot,
    summary_data,
    task_cells,
)
from l4emu.tables import emit_table
from protocols.exit_codes import ExitCode


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
               summary: bool = True, est_server=None, duration_s: float | None = None, live: bool | None = None,
               json_summary: Path | None = None, run_dir: Path | None = None, chaos: ChaosOptions | None = None) -> int:
    """Boot ``path`` and run it; the exit status as documented in the README.

    ``est_ca``: "HOST:PORT", or "" for the image's own EST endpoint; ``est_server``: a
    `hil.est_ca.binding.EstTarget` (see hil/est_ca/binding.py: the image, the CA and the CLI agree).
    ``live``: the rich live view (None: only when the console is a terminal); otherwise plain lines.
    ``duration_s``: stop after this long as planned (0, or 1 if a ``run.until`` task failed);
    ``timeout_s``: stop after this long as a failure (124). ``json_summary``: the summary as data.
    ``run_dir``: the tasks' work dirs (default var/run/IMAGE). ``chaos``: kill tasks at seeded points.
    """
    out = console or OutputConsole(highlight=False, soft_wrap=True)
    image = load_image(path, missing_ok=True).image  # an invalid image: ImageError before anything starts
    prestart_template(image)  # the task template imports the programs while the EST CA and devices start
    tags = {t.log.tag: t.name for t in image.tasks}
    if live is None:  # a terminal that can move its cursor (not TERM=dumb, as on the HIL board's serial line)
        live = out.is_terminal and not out.is_dumb_terminal
    sink = ViewSink(out, tags, show_trace=trace, live=live)
    with contextlib.ExitStack() as stack:
        if est_ca is not None or est_server is not None:  # the device's environment, started first
            path = stack.enter_context(start_est(path, est_ca, est_server, sink))
        loaded = load_image(path)  # now every module must be there (the CA has made its trust anchor)
        return _boot(loaded, sink, out, dump_caps=dump_caps, confine=confine, timeout_s=timeout_s, trace=trace,
                     summary=summary, duration_s=duration_s, json_summary=json_summary, run_dir=run_dir, chaos=chaos)


@contextlib.contextmanager
def start_est(path: Path, est_ca: str | None, target, sink: ViewSink):
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


@dataclasses.dataclass(frozen=True)
class ChaosOptions:
    """``--chaos SEED``: kill tasks at seeded random points (l4emu/chaos.py)."""

    seed: int
    tasks: tuple[str, ...] = ()  #: empty: every task of the image (never Sigma0 or Moe unless named)
    interval_s: float = 5.0  #: mean time between faults
    first_s: float = 3.0  #: the first fault, after boot


REFRESH_S = 0.25  #: live view refresh period
SAMPLE_S = 0.5  #: without a live view: how often memory is sampled for the summary's peak


def _boot(loaded: LoadedImage, sink: ViewSink, out: Console, *, dump_caps: bool, confine: bool,
          timeout_s: float | None, trace: bool, summary: bool, duration_s: float | None = None,
          json_summary: Path | None = None, run_dir: Path | None = None, chaos: ChaosOptions | None = None) -> int:
    if not confine:
        Console(stderr=True, highlight=False).print(
            "[bold yellow]warning[/]: --no-confine: task processes run WITHOUT OS confinement (no namespaces, own "
            "uid, seccomp or rlimits); only the kernel model isolates them. For debugging only.")
    if not loaded.image.run_until:
        sink.kernel("the image has no run.until: it runs until Ctrl-C" + (
            f" or --duration {duration_s:g} s" if duration_s else "") + (f" or --timeout {timeout_s:g} s"
                                                                        if timeout_s else ""))
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(loaded, sink, out, confine=confine, dump_caps=dump_caps, timeout_s=timeout_s, summary=summary,
                    trace=trace,
                    duration_s=duration_s, json_summary=json_summary, run_dir=run_dir, chaos=chaos)
    finally:
        for sig, handler in previous.items():  # a library call leaves the caller's handlers as they were
            signal.signal(sig, handler)


def _run(loaded: LoadedImage, sink: ViewSink, out: Console, *, confine: bool, dump_caps: bool, trace: bool = False,
         timeout_s: float | None, summary: bool, duration_s: float | None, json_summary: Path | None,
         run_dir: Path | None = None, chaos: ChaosOptions | None = None) -> int:
    from kernel_model.host.confinement import policy_for
    from kernel_model.host.keystore_devices import keystore_devices
    sup = Supervisor(loaded, sink, confinement=policy_for if confine else None, run_dir=run_dir)
    with keystore_devices(loaded, sup.run_dir, sink.kernel, BootError), sup:  # TPM/HSM up first, down last
        sup.kernel.trace = trace  # Traced events (and no direct channels) only with --trace: the view counts
        # served IPCs from the kernel's counters
        sup.handle_signals()
        def on_exit(task: object, code: int) -> None:  # the exiting task's memory, for the peak
            snapshot(sup, sink)
        sup.on_exit = on_exit
        started = time.monotonic()
        monkey = _chaos(sup, sink, chaos, started) if chaos is not None else None
        sup.start()
        code = None
        try:
            if dump_caps:
                code = sup.run(timeout_s=timeout_s, until=lambda: boot_complete(sup))
                if code is None and boot_complete(sup):
                    from l4emu.dump import render_dump
                    sink.kernel(f"boot complete after {(now_us() - sup.boot_started_us) / 1000:.0f} ms")
                    render_dump(sup.kernel.dump(), out)
            sink.start_live(sup)
            limits = [x for x in (timeout_s, duration_s) if x is not None]
            end = started + min(limits) if limits else None
            while code is None:
                slice_s = REFRESH_S if sink.live is not None else SAMPLE_S
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                wait = left if slice_s is None else (slice_s if left is None else min(slice_s, left))
                if monkey is not None and monkey.next_at() is not None:
                    wait = max(0.0, min(wait, started + monkey.next_at() - time.monotonic()))
                code = sup.run(timeout_s=wait)
                if monkey is not None and code is None:
                    monkey.tick()
                if sink.live is not None:
                    sink.refresh()
                else:
                    snapshot(sup, sink)  # samples peak memory for the summary
        finally:
            sink.stop_live()
        if code is None:
            if duration_s is not None and (timeout_s is None or duration_s <= timeout_s):
                failed = [n for n, status in sup.exited if n in loaded.image.run_until and status != 0]
                code = 1 if failed else 0
                sink.kernel(f"--duration {duration_s:g} s reached: stopping the system"
                            + (f" ({', '.join(failed)} failed)" if failed else ""))
            else:
                sink.kernel(f"timeout after {timeout_s} s: stopping the system")
                code = ExitCode.TIMEOUT
        denied = len(sup.kernel.violations)
        sink.kernel(f"system stopped with status {code}; {sup.kernel.ipc_count} IPCs, {denied} denied operation(s)")
        if summary:
            emit_table(out, SUMMARY_COLUMNS, [task_cells(r, peak=True) for r in snapshot(sup, sink)], title="tasks",
                       right=RIGHT, plain=not out.is_terminal or out.is_dumb_terminal)
            if any(r.generation is None for r in snapshot(sup, sink)):
                out.print("[dim]generation n* = no task generation from the kernel: the restart count stands in[/]",
                          soft_wrap=True)
            for line in service_lines(sink):
                out.print(line, soft_wrap=True)
            if monkey is not None and chaos is not None:  # (a monkey only with chaos options)
                out.print(f"chaos (seed {chaos.seed}): {monkey.injected} fault(s) injected, {monkey.recovered()} "
                          f"recovered (a later incarnation started)", soft_wrap=True)
        if json_summary is not None:
            data = summary_data(sup, sink, code, time.monotonic() - started)
            atomic_write(Path(json_summary), (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)
        return code


def _chaos(sup: Supervisor, sink: ViewSink, options: ChaosOptions, started: float):
    from l4emu.chaos import Chaos, schedule, targets_for
    try:
        targets = targets_for([t.name for t in sup.loaded.image.tasks], options.tasks)
    except ValueError as exc:
        raise BootError(str(exc)) from None
    sink.kernel(f"chaos (seed {options.seed}): killing one of {', '.join(targets)} about every "
                f"{options.interval_s:g} s, from {options.first_s:g} s after boot")
    return Chaos(sup, schedule(options.seed, targets, first=options.first_s, mean_gap=options.interval_s),
                 progress=lambda: time.monotonic() - started, say=sink.kernel)
