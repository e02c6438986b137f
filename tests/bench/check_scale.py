"""How `l4emu check` scales: generated images of N tasks (pairs of client and server, each pair with
its own gate and shared dataspace, every client triggering one IRQ of a hub task), timed end to end
(validate, analyse, print the report) in this process.

    .venv/bin/python tests/bench/check_scale.py [N ...]      # default: 750 1500 3000

Prints seconds per size and the ratio to the previous size (about 2 for each doubling = linear).
"""
from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from l4emu.check import check_image  # noqa: E402


def pairs_image(n: int) -> str:
    """``n`` tasks: a hub binding IRQ ``tick`` and (n-1) tasks in server/client pairs."""
    lines = ["name: pairs", "ram: 256MiB", "objects:", "  tick: {type: irq}"]
    lines += [f"  g{j}: {{type: gate}}\n  s{j}: {{type: dataspace, size: 4KiB}}" for j in range((n - 1 + 1) // 2)]
    lines += ["tasks:", "  hub: {program: hello.ping_server, caps: {tick: 'tick:rws'}}"]
    for i in range(n - 1):
        j = i // 2
        if i % 2 == 0:
            lines.append(f"  t{i}: {{program: hello.ping_server, caps: {{g: 'g{j}:svr', s: 's{j}:rw'}}}}")
        else:
            lines.append(f"  t{i}: {{program: hello.ping_client, caps: {{g: 'g{j}:rw', s: 's{j}:r', tick: 'tick:r'}}}}")
    return "\n".join(lines) + "\n"


def main(sizes: list[int]) -> None:
    previous = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"pairs{n}.yaml"
            path.write_text(pairs_image(n))
            out = Console(file=io.StringIO(), width=200)
            start = time.perf_counter()
            check_image(path, out)
            took = time.perf_counter() - start
            ratio = f"  x{took / previous:.2f} of the previous size" if previous else ""
            print(f"l4emu check, {n:5d} tasks: {took:6.2f} s{ratio}")
            previous = took


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [750, 1500, 3000])
