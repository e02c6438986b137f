"""Boot time and memory footprint of the WvdS system (issue 15, Must-have 5/6).

``bench_boot_footprint(args)`` boots ``images/wvds.yaml`` (confined, as ``make boot`` does, without an
EST CA: the EST service keeps retrying, which is no part of booting) with task processes forked from
the zygote and with one ``posix_spawn`` per task, alternating, and measures in the same run:

* **every server serves**: the time from ``Supervisor.start()`` until every task of the image has
  been started, every task that serves a gate (an image cap with the gate-server right ``svr``) has
  been seen in its server loop (its thread in an open wait, ``ThreadState.RECEIVING`` with no
  partner), and Moe sits in its open wait (``l4emu.boot.boot_complete``);
* next to it, in the same run: the same boot with one ``posix_spawn`` per task (as before the
  template), and ``python -I -c pass`` started once per task process (the bare interpreter start-up
  the posix_spawn path pays for every task, before any import);
* the CPU time every process (kernel, template, tasks) used until then: on a loaded machine the wall
  time mostly measures the load, the CPU time what the boot costs;
* the total RSS and PSS of the booted system: the kernel's own process is reported apart, the task
  processes (every process below the kernel: tasks, their pid-namespace shims, the zygote) are
  summed from ``/proc/<pid>/smaps_rollup``.

Run alone: ``.venv/bin/python tests/bench/run.py --only boot`` (``--boot-runs N`` boots per variant).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from capabilities.rights import CapRights  # noqa: E402
from kernel_model.host import zygote as zygote_module  # noqa: E402
from kernel_model.host.confinement import policy_for  # noqa: E402
from kernel_model.host.console import RecordingConsole  # noqa: E402
from kernel_model.host.images import load_image  # noqa: E402
from kernel_model.host.supervisor import Supervisor, now_us  # noqa: E402
from kernel_model.objects import ThreadState  # noqa: E402
from l4emu.boot import boot_complete  # noqa: E402

WVDS = ROOT / "images" / "wvds.yaml"


def servers(sup: Supervisor) -> set[str]:
    """The image's tasks that serve a gate: a cap with the gate-server right."""
    return {t.name for t in sup.loaded.image.tasks if any(CapRights.SVR in c.rights for c in t.caps)}


def serving(sup: Supervisor) -> set[str]:
    """Tasks with a thread in an open wait now (their server loop's receive), or serving a direct channel
    (docs/direct-channels.md: such a server waits in user space, the kernel sees it running)."""
    directs = sup.kernel.directs
    return {t.name for t in sup.kernel.tasks.values() if t.alive and any(
        (th.state is ThreadState.RECEIVING and th.recv_from is None) or directs.serves_directly(th)
        for th in t.threads)}


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (``/proc/<pid>/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def rss_pss_kib(pid: int) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if line.count(":") == 1 and line[0].isupper())
    except OSError:
        return 0, 0
    def kib(key: str) -> int:
        return int(fields.get(key, "0 kB").split()[0])
    return kib("Rss"), kib("Pss")


def cpu_ms(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def cpu_now() -> dict[int, float]:
    return {pid: cpu_ms(pid) for pid in [os.getpid(), *descendants(os.getpid())]}


def boot_once(zygote: bool, confine: bool = True, run_dir: Path | None = None) -> dict:
    """One boot of wvds: ms until every server serves, the CPU every process used for it, and then
    the footprint of the running system. ``run_dir``: reuse the work dirs (and their filesystem
    images) of an earlier boot, as a second ``make boot`` does."""
    with tempfile.TemporaryDirectory() as tmp:
        console = RecordingConsole()
        sup = Supervisor(load_image(WVDS), console, confinement=policy_for if confine else None,
                         run_dir=run_dir or Path(tmp), zygote=zygote)
        with sup:
            want = servers(sup)
            seen: set[str] = set()
            before = cpu_now()
            start = now_us()

            def ready() -> bool:
                seen.update(serving(sup) & want)
                return seen == want and boot_complete(sup)

            sup.start()
            sup.run(timeout_s=120, until=ready)
            if not ready():
                raise RuntimeError("wvds did not boot:\n" + console.text())
            ms = (now_us() - start) / 1000
            cpu = sum(used - before.get(pid, 0.0) for pid, used in cpu_now().items())
            tasks = len(sup.procs)
            rss = pss = 0
            for pid in descendants(os.getpid()):
                r, p = rss_pss_kib(pid)
                rss, pss = rss + r, pss + p
            krss, kpss = rss_pss_kib(os.getpid())
        return {"ms": ms, "cpu": cpu, "tasks": tasks, "rss": rss, "pss": pss, "krss": krss, "kpss": kpss}


def bare_starts(n: int) -> float:
    """ms for n ``python -I -c pass`` start-ups, two at a time (the machine's cores), as a boot would."""
    t0 = time.perf_counter()
    procs: list[subprocess.Popen] = []
    for _ in range(n):
        if len(procs) >= 2:
            procs.pop(0).wait()
        procs.append(subprocess.Popen([sys.executable, "-I", "-c", "pass"], env={"LANG": "C.UTF-8"}))
    for p in procs:
        p.wait()
    return (time.perf_counter() - t0) * 1000


def _no_template() -> None:
    """Stop this process's task template: the next zygote boot starts it cold, a posix_spawn boot
    does not count an idle one."""
    if zygote_module._shared is not None:
        zygote_module._shared.close()
        zygote_module._shared = None


def bench_boot_footprint(args) -> list[tuple[str, str, str]]:
    runs = max(1, getattr(args, "boot_runs", 3))
    confine = not getattr(args, "no_confine", False)
    cold, warm, spawn, bare = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        boot_once(False, confine, run_dir)  # the work dirs' filesystem images, made once (mkfs.ext4)
        for _ in range(runs):  # interleaved: drift hits every variant alike
            _no_template()
            cold.append(boot_once(True, confine, run_dir))  # the template starts with this boot
            warm.append(boot_once(True, confine, run_dir))  # a template already running (the next system)
            _no_template()
            spawn.append(boot_once(False, confine, run_dir))
            bare.append(bare_starts(spawn[-1]["tasks"]))
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    c, w, s, b = med(cold, "ms"), med(warm, "ms"), med(spawn, "ms"), statistics.median(bare)
    n = spawn[-1]["tasks"]
    mib = lambda kib: f"{kib / 1024:.0f} MiB"  # noqa: E731
    py = os.path.realpath(sys.executable)
    return [
        ("wvds boot until every server serves (task template started with it)", f"{c:.0f} ms",
         f"template/posix_spawn = {c / s:.2f}x; goal <= 300 ms"),
        ("  same, the template already running (a second system)", f"{w:.0f} ms", f"{w / s:.2f}x"),
        ("  same, one posix_spawn per task (before)", f"{s:.0f} ms", f"posix_spawn/bare = {s / b:.2f}x"),
        (f"  bare `{py} -I -c pass` x {n} (one per task process), 2 at a time", f"{b:.0f} ms", ""),
        ("CPU of that boot, every process (template started with it)", f"{med(cold, 'cpu'):.0f} ms",
         f"template/posix_spawn = {med(cold, 'cpu') / med(spawn, 'cpu'):.2f}x"),
        ("  same, the template already running", f"{med(warm, 'cpu'):.0f} ms",
         f"{med(warm, 'cpu') / med(spawn, 'cpu'):.2f}x"),
        ("  same, one posix_spawn per task", f"{med(spawn, 'cpu'):.0f} ms", ""),
        ("wvds task processes' total PSS (template, its tasks)", mib(med(warm, "pss")),
         f"template/posix_spawn = {med(warm, 'pss') / med(spawn, 'pss'):.2f}x; goal <= 60 MiB"),
        ("  same, one posix_spawn per task (each with its pid-namespace shim)", mib(med(spawn, "pss")), ""),
        ("wvds task processes' total RSS (template, its tasks)", mib(med(warm, "rss")),
         f"template/posix_spawn = {med(warm, 'rss') / med(spawn, 'rss'):.2f}x"),
        ("  same, one posix_spawn per task", mib(med(spawn, "rss")), ""),
        ("  the kernel's own process (here: the bench's) RSS / PSS",
         f"{mib(med(warm, 'krss'))} / {mib(med(warm, 'kpss'))}", ""),
    ]
