"""Direct channels next to the kernel path and a plain socketpair, measured interleaved in one run.

``bench_direct(args)`` -> rows (what, measured, ratio): the 64-byte call round trip through the whole
task runtime (``env.ipc``, tasks/testing/direct_bench_client.py) to an echo server, once through a gate
with ``direct: true`` (a kernel-granted direct channel after the first call) and once through a plain
gate (every call through the kernel), next to a socketpair between two Python processes. Target:
direct <= 1.5x socketpair. Run: ``.venv/bin/python tests/bench/run.py --only direct``.
"""
from __future__ import annotations

import statistics

IMAGE = """
    name: direct-bench
    run: {{until: [client]}}
    objects:
      svc: {{type: gate, direct: {direct}}}
    tasks:
      server:
        program: testing.echo_server
        caps: {{svc: "svc:svr"}}
      client:
        program: testing.direct_bench_client
        args: ["{rounds}"]
        caps: {{svc: "svc:rw"}}
"""


def runtime_rtt(rounds: int, confine: bool, direct: bool) -> dict:
    from tests.bench.run import _run_image
    return _run_image(IMAGE.format(rounds=rounds, direct="true" if direct else "false"), confine)


def bench_direct(args) -> list[tuple[str, str, str]]:
    from tests.bench.run import socketpair_rtt
    direct, kernel, pair = [], [], []
    for _ in range(args.repeats):  # interleaved: drift hits all three alike
        pair.append(socketpair_rtt(args.rounds, relay=False))
        on = runtime_rtt(args.rounds, not args.no_confine, direct=True)
        if on["direct_calls"] != 5 * args.rounds:
            raise RuntimeError(f"the direct bench went through the kernel: {on}")
        direct.append(on["rtt_us"])
        kernel.append(runtime_rtt(args.rounds, not args.no_confine, direct=False)["rtt_us"])
    d, k, p = statistics.median(direct), statistics.median(kernel), statistics.median(pair)
    return [
        ("IPC call round trip (64 B) on a direct channel (env.ipc)", f"{d:.1f} µs",
         f"direct/socketpair = {d / p:.2f}x (target <= 1.5x)"),
        ("IPC call round trip (64 B) through the kernel (env.ipc)", f"{k:.1f} µs",
         f"kernel/socketpair = {k / p:.2f}x; kernel/direct = {k / d:.1f}x"),
        ("  socketpair round trip, 2 Python processes", f"{p:.1f} µs", ""),
    ]
