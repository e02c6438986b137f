"""``make reliability``: a bounded chaos + durability + load scenario, and its table.

The system is images/reliability.yaml: ``counter`` keeps a durable count (each answer is on disk
before it is sent) and N ``load`` clients call it R times each. While they run, the server is
killed (SIGKILL) at seeded points measured in kernel IPCs (``l4emu.chaos``: the same seed gives
the same points on any machine, however fast). Moe restarts it (its restart policy); callers
caught by a kill get ``L4_IPC_ENOT_EXISTENT`` and retry. Then the checks, one table row each:

- faults injected (= planned) and recovered (a later incarnation of the server came up);
- requests under load, answers, and lost responses (an attempt answered neither by the server
  nor by the kernel within the client's hang guard) = 0;
- durable-state checks: every client saw the count only grow (no acknowledged write lost), and the
  store on disk is intact and at least the highest count any client was told.

The table's rows come from ``CHECKS``, a list of functions ``Outcome -> [Row]``: more checks
(crash-point tests of the services' stores, say) are added by appending to it.
``tests/l4emu/test_reliability.py`` runs a short version in the normal suite.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from kernel_model.host import workdirs
from kernel_model.host.console import RecordingConsole
from kernel_model.host.images import PROJECT_ROOT, load_image
from kernel_model.host.supervisor import Supervisor
from kernel_model.logs import original
from l4emu.chaos import Chaos, schedule

IMAGE = PROJECT_ROOT / "images" / "reliability.yaml"
SERVER = "counter"
IPCS_PER_REQUEST = 2  #: the client's call and the server's reply: the least a request costs the kernel


@dataclasses.dataclass(frozen=True)
class Row:
    check: str
    value: str
    expected: str
    ok: bool


@dataclasses.dataclass
class Outcome:
    seed: int
    planned_faults: int
    clients: int
    requests: int
    exit_code: int | None  #: None: the guard ran out
    chaos: Chaos
    results: dict[str, dict]  #: client -> its RESULT
    store: dict | None  #: the server's store.json at the end
    store_error: str = ""
    console: RecordingConsole | None = None
    run_dir: Path | None = None


def faults(o: Outcome) -> list[Row]:
    injected, recovered = o.chaos.injected, o.chaos.recovered()
    return [Row("faults injected (SIGKILL of the server)", str(injected), f"{o.planned_faults}",
                injected == o.planned_faults),
            Row("recovered (a later incarnation served)", str(recovered), f"{injected}", recovered == injected)]


def load(o: Outcome) -> list[Row]:
    res = list(o.results.values())
    total = sum(r.get("requests", 0) for r in res)
    answered = sum(r.get("ok", 0) for r in res)
    refused = sum(r.get("enot_existent", 0) for r in res)
    lost = sum(r.get("lost", 0) + r.get("other", 0) + r.get("abandoned", 0) for r in res)
    finished = o.exit_code == 0 and len(res) == o.clients
    guard = "" if o.exit_code is not None else " (guard ran out)"
    return [Row("clients finished", f"{len(res)} of {o.clients}" + guard, f"{o.clients}", finished),
            Row("requests under load", str(total), f">= {o.clients * o.requests}", total >= o.clients * o.requests),
            Row("answered by the server", str(answered), f"{o.clients * o.requests}",
                answered == o.clients * o.requests),
            Row("ENOT_EXISTENT while it was down (retried)", str(refused), "any", True),
            Row("lost responses", str(lost), "0", lost == 0 and finished)]


def durable(o: Outcome) -> list[Row]:
    res = list(o.results.values())
    regressions = sum(r.get("regressions", 0) for r in res)
    highest = max((r.get("last", 0) for r in res), default=0)
    rows = [Row("durable: each client saw the count only grow", f"{regressions} regression(s)", "0",
                regressions == 0 and bool(res))]
    if o.store is None:
        rows.append(Row("durable: store intact after the last kill", o.store_error or "missing", "intact", False))
    else:
        from tasks.testing.store_server import digest
        value = o.store.get("value")
        intact = isinstance(value, int) and o.store.get("sha256") == digest(value)
        rows.append(Row("durable: store intact after the last kill", "intact" if intact else "damaged", "intact",
                        intact))
        rows.append(Row("durable: store holds every answered count", f"{value} (highest answered {highest})",
                        f">= {highest}", intact and isinstance(value, int) and value >= highest))
    return rows


CHECKS: list[Callable[[Outcome], list[Row]]] = [faults, load, durable]


def scenario_image(clients: int, requests: int, dest: Path) -> Path:
    data = yaml.safe_load(IMAGE.read_text())
    template = data["tasks"].pop("load1")
    for name in [n for n in data["tasks"] if n.startswith("load")]:
        del data["tasks"][name]
    colors = "cymbrw"
    for i in range(1, clients + 1):
        data["tasks"][f"load{i}"] = dict(template, args=[str(requests)],
                                         log={"tag": f"load{i}", "color": colors[(i - 1) % len(colors)]})
    data["run"] = {"until": [f"load{i}" for i in range(1, clients + 1)]}
    path = dest / "reliability.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_scenario(*, seed: int = 1, faults: int = 3, clients: int = 2, requests: int = 300, guard_s: float = 300.0,
                 work: Path, confine: bool = True, say: Callable[[str], None] = lambda text: None) -> Outcome:
    """Boot the scenario in ``work``, run it to the end (``guard_s`` is a hang guard, not a pace)."""
    from kernel_model.host.confinement import policy_for
    path = scenario_image(clients, requests, work)
    console = RecordingConsole()
    run_dir = work / "run"
    # the faults fall within the load: the clients' requests alone make at least this many IPCs
    span = IPCS_PER_REQUEST * clients * requests * 0.8
    gap = span / (faults + 1)
    sup = Supervisor(load_image(path), console, confinement=policy_for if confine else None, run_dir=run_dir)
    with sup:
        chaos = Chaos(sup, schedule(seed, [SERVER], first=gap, mean_gap=gap), progress=lambda: sup.kernel.ipc_count,
                      say=say, limit=faults, wait_for_target=True)
        sup.start()
        deadline = time.monotonic() + guard_s
        code = None
        while code is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            code = sup.run(timeout_s=min(left, 1.0), until=chaos.due)
            chaos.tick()
        sup.shutdown()
        results = {}
        for line in console.lines:
            tag, sep, text = line.partition("| ")
            if sep and tag.strip().startswith("load") and text.startswith("RESULT "):
                results[tag.strip()] = json.loads(original(text[len("RESULT "):]))
        store, error = read_store(run_dir / SERVER)
    return Outcome(seed, faults, clients, requests, code, chaos, results, store, error, console, run_dir)


def read_store(workdir: Path) -> tuple[dict | None, str]:
    try:
        with tempfile.TemporaryDirectory(prefix="l4emu-reliability-") as tmp:
            files = workdirs.export_files(workdir, Path(tmp) / "files")
            return json.loads((files / "store.json").read_text()), ""
    except (OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def rows(outcome: Outcome) -> list[Row]:
    return [row for check in CHECKS for row in check(outcome)]


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from l4emu.tables import emit_table
    ap = argparse.ArgumentParser(prog="make reliability", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--faults", type=int, default=10)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--requests", type=int, default=1000, help="per client")
    ap.add_argument("--guard", type=float, default=600.0, help="hang guard for the whole run, seconds")
    ap.add_argument("--keep", metavar="DIR", default=None, help="keep the run (image, work dirs) in DIR")
    args = ap.parse_args(argv)
    out = Console(highlight=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="l4emu-reliability-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        out.print(f"reliability: seed {args.seed}, {args.faults} faults, {args.clients} clients x {args.requests} "
                  f"requests (images/reliability.yaml)")
        started = time.monotonic()
        outcome = run_scenario(seed=args.seed, faults=args.faults, clients=args.clients, requests=args.requests,
                               guard_s=args.guard, work=work, say=lambda text: out.print(text))
        table = rows(outcome)
        emit_table(out, ("check", "value", "expected", "ok"),
                   [(r.check, r.value, r.expected, "ok" if r.ok else "[red]FAIL[/]") for r in table],
                   title=f"reliability (seed {args.seed}, {time.monotonic() - started:.0f} s)", right=("value",))
    failed = [r for r in table if not r.ok]
    if failed:
        out.print(f"[red]{len(failed)} check(s) failed[/]")
        if outcome.console is not None:
            print("\n".join(outcome.console.lines[-40:]), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
