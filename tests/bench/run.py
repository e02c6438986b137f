"""``make bench``: every benchmark, each next to the baseline it competes with, measured in one run.

Ratios matter, absolute numbers drift (shared, noisy 2-core machines): each
comparison is measured side by side, interleaved, in this one process run.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kernel_model.host.confinement import policy_for  # noqa: E402
from kernel_model.host.console import RecordingConsole  # noqa: E402
from kernel_model.host.images import load_image  # noqa: E402
from kernel_model.host.supervisor import Supervisor, now_us  # noqa: E402
from l4emu.boot import boot_complete  # noqa: E402
from tasks.testing.crypto_bench import timed  # noqa: E402  (the same timing in-process and in the task)

PAYLOAD = 64


def _echo(sock: socket.socket) -> None:
    while True:
        data = sock.recv(4096)
        if not data:
            return
        sock.send(data)


def _relay(a: socket.socket, b: socket.socket) -> None:
    """A third process that forwards both ways: the least a user-space kernel must do."""
    while True:
        data = a.recv(4096)
        if not data:
            return
        b.send(data)
        a.send(b.recv(4096))


def socketpair_rtt(rounds: int, relay: bool) -> float:
    ctx = mp.get_context("fork")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    procs = []
    if relay:
        c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        procs.append(ctx.Process(target=_relay, args=(b, c)))
        procs.append(ctx.Process(target=_echo, args=(d,)))
    else:
        procs.append(ctx.Process(target=_echo, args=(b,)))
    for p in procs:
        p.start()
    msg = bytes(PAYLOAD)
    for _ in range(200):
        a.send(msg)
        a.recv(4096)
    samples = []
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            a.send(msg)
            a.recv(4096)
        samples.append((time.perf_counter_ns() - start) / rounds / 1000)
    a.close()
    for p in procs:  # forked echoers hold copies of every end, so they never see EOF: stop them
        p.kill()
        p.join()
    return statistics.median(samples)


FLOOD_IMAGE = """
    name: flood-bench
    run: {{until: [client]}}
    objects:
      svc: {{type: gate}}
      go: {{type: irq}}
    tasks:
      server:
        program: testing.echo_server
        caps: {{svc: "svc:svr"}}
      client:
        program: testing.bench_client
        args: ["{rounds}"]
        caps: {{svc: "svc:rw"}}
{flooder}"""

FLOODER = """
      flooder:
        program: testing.flooder
        args: ["{burst},{kind}"]
"""


def flood_rtt(rounds: int, confine: bool, flooders: int, burst: int, kind: str = "recv") -> float:
    """An honest client's kernel-mediated round trip while ``flooders`` other tasks flood the kernel."""
    flood = "".join(FLOODER.replace("flooder:", f"flooder{i}:").format(burst=burst, kind=kind)
                    for i in range(flooders))
    return _run_image(FLOOD_IMAGE.format(rounds=rounds, flooder=flood), confine)["rtt_us"]


def kernel_rtt(rounds: int, confine: bool) -> float:
    """The kernel-mediated round trip: the flood bench's image without a flooder."""
    return flood_rtt(rounds, confine, flooders=0, burst=0)


def bench_flood(args) -> list[tuple[str, str, str]]:
    """Fair service: the honest client's slowdown while one task floods (target <= 1.5x)."""
    quiet, flooded, denied = [], [], []
    for _ in range(args.repeats):  # interleaved: the baseline is the same image without the flooder
        quiet.append(flood_rtt(args.flood_rounds, not args.no_confine, 0, args.flood_burst))
        flooded.append(flood_rtt(args.flood_rounds, not args.no_confine, 1, args.flood_burst))
        denied.append(flood_rtt(args.flood_rounds, not args.no_confine, 1, args.flood_burst, "deny"))
    q, f, d = statistics.median(quiet), statistics.median(flooded), statistics.median(denied)
    return [("IPC round trip of an honest client while another task floods the kernel", f"{f:.1f} µs",
             f"flooded/quiet = {f / q:.2f}x (target <= 1.5x)"),
            ("  ... while it floods with denied calls (each a printed violation)", f"{d:.1f} µs",
             f"flooded/quiet = {d / q:.2f}x (target <= 1.5x)"),
            (f"  same client, no flooder (flooder: {args.flood_burst} frames per burst)", f"{q:.1f} µs", "")]


def boot_time(runs: int, confine: bool) -> tuple[float, float]:
    """Median ms from start to 'every task started, Moe idle', and to the end of hello."""
    to_ready, to_done = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            console = RecordingConsole()
            with Supervisor(load_image(ROOT / "images" / "hello.yaml"), console,
                            confinement=policy_for if confine else None, run_dir=Path(tmp)) as sup:
                start = now_us()
                sup.start()
                sup.run(timeout_s=120, until=lambda: boot_complete(sup))
                to_ready.append((now_us() - start) / 1000)
                if sup.run(timeout_s=120) != 0:
                    raise RuntimeError(console.text())
                to_done.append((now_us() - start) / 1000)
    return statistics.median(to_ready), statistics.median(to_done)


def bench_ipc(args) -> list[tuple[str, str, str]]:
    rows = []
    ours, direct, relay = [], [], []
    for _ in range(args.repeats):  # interleaved, so drift hits all three alike
        direct.append(socketpair_rtt(args.rounds, relay=False))
        relay.append(socketpair_rtt(args.rounds, relay=True))
        ours.append(kernel_rtt(args.rounds, confine=not args.no_confine))
    o, d, r = statistics.median(ours), statistics.median(direct), statistics.median(relay)
    rows.append(("IPC call round trip (64 B), kernel-mediated", f"{o:.1f} µs", ""))
    rows.append(("  direct socketpair round trip, 2 Python processes", f"{d:.1f} µs", f"ours/direct = {o / d:.2f}x"))
    rows.append(("  relayed through a 3rd Python process", f"{r:.1f} µs", f"ours/relay = {o / r:.2f}x"))
    ready, done = boot_time(args.boot_runs, confine=not args.no_confine)
    rows.append(("boot hello: all tasks started", f"{ready:.0f} ms", ""))
    rows.append(("boot hello: run to completion", f"{done:.0f} ms", ""))
    return rows


def _run_image(text: str, confine: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(textwrap.dedent(text))
        console = RecordingConsole()
        with Supervisor(load_image(path), console, confinement=policy_for if confine else None,
                        run_dir=Path(tmp) / "run") as sup:
            sup.start()
            code = sup.run(timeout_s=900)
            line = next((text for text in console.lines if "BENCH " in text), None)
            if code != 0 or line is None:
                raise RuntimeError("benchmark image failed:\n" + console.text())
            return json.loads(line.split("BENCH ", 1)[1])


CRYPTO_IMAGE = """
    name: crypto-bench
    run: {{until: [client]}}
    objects:
      crypto: {{type: gate}}
      crypto_shm: {{type: dataspace, size: 160KiB}}
    tasks:
      crypto:
        program: crypto_service.task
        config:
          clients: {{client: {{gate: crypto, shm: crypto_shm}}}}
          service: {{rate_limit: {{enabled: false}}}}
        caps: {{crypto: "crypto:svr", crypto_shm: "crypto_shm:rw"}}
      client:
        program: testing.crypto_bench
        args: ["{rounds}"]
        caps: {{crypto: "crypto:rw", crypto_shm: "crypto_shm:rw"}}
"""


def in_process_crypto(rounds: int) -> dict:
    from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    aes = AESGCM(os.urandom(32))
    big, small = os.urandom(64 * 1024 - 28), os.urandom(16)
    dsa = mldsa.MLDSA65PrivateKey.generate()
    kem = mlkem.MLKEM768PrivateKey.generate().public_key()
    return {
        "aes64k_s": timed(lambda: aes.encrypt(os.urandom(12), big, b""), rounds),
        "aes16_s": timed(lambda: aes.encrypt(os.urandom(12), small, b""), rounds * 4),
        "mldsa65_sign_s": timed(lambda: dsa.sign(b"message"), rounds),
        "mlkem768_encaps_s": timed(lambda: kem.encapsulate(), rounds),
    }


def bench_crypto(args) -> list[tuple[str, str, str]]:
    ours, base = [], []
    for _ in range(args.repeats):
        base.append(in_process_crypto(args.crypto_rounds))
        ours.append(_run_image(CRYPTO_IMAGE.format(rounds=args.crypto_rounds), confine=not args.no_confine))
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    mib = 64 * 1024 / (1 << 20)
    o_aes, b_aes = med(ours, "aes64k_s"), med(base, "aes64k_s")
    rows = [("AES-256-GCM 64 KiB, client task -> kernel -> crypto task (kernel path)", f"{mib / o_aes:.0f} MiB/s",
             f"ours/in-process = {b_aes / o_aes:.0%} of throughput"),
            ("  same operation in-process (cryptography)", f"{mib / b_aes:.0f} MiB/s", "")]
    o_s, b_s = med(ours, "aes16_s"), med(base, "aes16_s")
    rows.append(("small requests (16-byte AES-GCM) through the service, kernel path", f"{1 / o_s:.0f} ops/s",
                 f"in-process {1 / b_s:.0f} ops/s"))
    for key, name in (("mldsa65_sign_s", "ML-DSA-65 sign"), ("mlkem768_encaps_s", "ML-KEM-768 encaps")):
        o, b = med(ours, key), med(base, key)
        rows.append((f"{name} through the service", f"{o * 1e6:.0f} µs", f"ours/in-process = {o / b:.2f}x"))
        rows.append((f"  {name} in-process", f"{b * 1e6:.0f} µs", ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--boot-runs", type=int, default=5)
    parser.add_argument("--no-confine", action="store_true")
    parser.add_argument("--crypto-rounds", type=int, default=50)
    parser.add_argument("--flood-rounds", type=int, default=2000)
    parser.add_argument("--flood-burst", type=int, default=32)
    parser.add_argument("--only", default=None,
                        choices=["ipc", "kernel", "direct", "crypto", "paths", "flood", "keystore", "boot", "hil"])
    parser.add_argument("--hil-runs", type=int, default=1, help="guest boots in the hil section")
    args = parser.parse_args(argv)
    from hil.est_ca.authority import EstCa
    EstCa(ROOT / "var" / "est-ca")  # wvds boots with the dev CA's trust anchor as a module: made as `make boot` does
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"l4emu benchmarks ({os.cpu_count()} CPUs; reproduce: make bench)")
    table.add_column("what")
    table.add_column("measured", justify="right")
    table.add_column("ratio")
    rows = []
    if args.only in (None, "ipc"):
        rows += bench_ipc(args)
    if args.only in (None, "kernel"):
        from tests.bench.kernel_path import bench_kernel_path  # the kernel core, the supervisor, the path

        rows += bench_kernel_path(args)
    if args.only in (None, "direct"):
        from tests.bench.direct import bench_direct  # kernel-granted direct channels (docs/direct-channels.md)
        rows += bench_direct(args)
    if args.only in (None, "crypto"):
        rows += bench_crypto(args)
    if args.only in (None, "paths"):
        from tests.bench.crypto_paths import bench_crypto_paths  # 16 B ops/s, the ring, PQC next to in-process
        rows += bench_crypto_paths(args)
    if args.only in (None, "flood"):
        rows += bench_flood(args)
    if args.only in (None, "keystore"):
        from tests.bench.keystore import bench_keystore  # the crypto service's key-storage backends
        rows += bench_keystore(args)
    if args.only in (None, "boot"):
        from tests.bench.boot_footprint import bench_boot_footprint  # wvds boot time, RSS/PSS

        rows += bench_boot_footprint(args)
    if args.only in (None, "hil"):
        from hil_bench import bench_hil  # tests/bench/hil_bench.py: the aarch64 guest next to the host

        rows += bench_hil(args)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
