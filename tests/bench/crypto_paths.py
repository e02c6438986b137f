"""Crypto fast paths, each next to its in-process baseline measured in the same run.

``python tests/bench/run.py --only paths`` (or ``make bench``). Rows: 16 B AES-GCM through the
crypto service with the rate limiter raised (ops/s; goal >= 10,000, 10x the WvdS limit), AES-GCM
1 MiB in 60 KiB chunks through the request ring and one request per signal (goal >= 50 % of
in-process throughput), ML-KEM-768 encaps and ML-DSA-65 sign through the service (goals
<= 2x / <= 1.2x in-process), and the client + service Python per small request without any
kernel (the codec and shared-memory steps alone, in one process; goal <= 15 µs).
"""
from __future__ import annotations

import mmap
import os
import statistics
import time
from types import SimpleNamespace
from typing import Any

PATHS_IMAGE = """
    name: crypto-paths
    run: {{until: [client]}}
    objects:
      crypto: {{type: gate, direct: true}}   # as images/wvds.yaml declares the gateway's crypto gate
      crypto_shm: {{type: dataspace, size: 1216KiB}}   # 18 ring slots: 1 MiB in 60 KiB chunks, one signal
    tasks:
      crypto:
        program: crypto_service.task
        config:
          clients: {{client: {{gate: crypto, shm: crypto_shm}}}}
          service: {{rate_limit: {{rate_per_s: 1000000000, burst: 1000000000}}}}   # raised, not off
        caps: {{crypto: "crypto:svr", crypto_shm: "crypto_shm:rw"}}
      client:
        program: testing.crypto_bench
        args: [paths, "{rounds}"]
        caps: {{crypto: "crypto:rw", crypto_shm: "crypto_shm:rw"}}
"""


def in_process(rounds: int) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from tasks.testing.crypto_bench import timed
    aes = AESGCM(os.urandom(32))
    small, mib = os.urandom(16), os.urandom(1 << 20)
    chunk = 60 * 1024

    def one_mib() -> None:
        for i in range(0, len(mib), chunk):
            aes.encrypt(os.urandom(12), mib[i:i + chunk], b"")

    dsa = mldsa.MLDSA65PrivateKey.generate()
    kem = mlkem.MLKEM768PrivateKey.generate().public_key()
    return {
        "aes16_s": timed(lambda: aes.encrypt(os.urandom(12), small, b""), rounds * 20),
        "ring1m_s": timed(one_mib, max(1, rounds // 10)),
        "mlkem768_encaps_s": timed(lambda: kem.encapsulate(), rounds),
        "mldsa65_sign_s": timed(lambda: dsa.sign(b"message"), rounds),
    }


class _Loop:
    """``CryptoClient`` -> ``ShmClient`` -> ``shm_calls`` -> ``CryptoService`` in one process: a
    fake kernel call (a direct function call) on a real shared mapping."""

    def __init__(self) -> None:
        from tasks.crypto_service.service import CryptoService
        from tasks.runtime.memory import Region
        from tasks.runtime.shm import ShmPeer, shm_calls
        self.region = Region(0x1000, 160 * 1024, True, mmap.mmap(-1, 160 * 1024))
        service = CryptoService({"rate_limit": {"enabled": False}})
        self.server = shm_calls({16: ShmPeer("c", 16, self.region)},
                                lambda peer, frame: service.handle_parts(frame), ring=True)

    def map_dataspace(self, shm: int, writable: bool) -> Any:
        return self.region

    def call(self, gate: int, proto: int, *words: int, timeout_us: int | None = None) -> Any:
        reply = self.server(SimpleNamespace(proto=proto, label=16, word=words.__getitem__,
                                            has_words=lambda n: len(words) >= n))
        return SimpleNamespace(ok=True, status=reply.status, word=reply.words.__getitem__,
                               has_words=lambda n: len(reply.words) >= n)


def python_per_request(rounds: int) -> tuple[float, float, float, float]:
    """µs of CPU per 16 B AES-GCM request, best of 5: (client + service in one loop, the client
    library alone on a canned transport, the service side alone: shared-memory step + handling,
    the AES-GCM call itself)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from protocols import crypto as p
    from protocols.crypto import KeyType
    from protocols.crypto_client import CryptoClient
    from tasks.runtime.shm import ShmClient
    loop = _Loop()
    client = CryptoClient(ShmClient(loop, 1, 2).transact)
    key = client.generate_key(KeyType.AES_256).info.key_id
    aes, small = AESGCM(os.urandom(32)), os.urandom(16)
    canned = bytearray(p.encode_response(p.Status.SUCCESS, p.AesEncryptResponse(bytes(12), small, bytes(16)), seq=0))

    def transport(frame: bytes) -> bytes:  # the answer, echoing the request's sequence number
        canned[8:12] = frame[8:12]
        return bytes(canned)

    alone = CryptoClient(transport)
    frame = p.AesEncryptRequest(key, b"", small).encode(9)
    msg = SimpleNamespace(proto=0x4100, label=16, word=(len(frame),).__getitem__, has_words=lambda n: True)

    area: Any = loop.region.map

    def service_side() -> None:
        area[0:len(frame)] = frame  # what the client's step leaves in the request area
        loop.server(msg)

    def best(fn: Any) -> float:  # CPU time of this process: everything here runs in it
        fn()
        samples = []
        for _ in range(5):
            start = time.process_time()
            for _ in range(rounds):
                fn()
            samples.append((time.process_time() - start) / rounds * 1e6)
        return min(samples)

    return (best(lambda: client.encrypt(key, small)), best(lambda: alone.encrypt(key, small)), best(service_side),
            best(lambda: aes.encrypt(os.urandom(12), small, b"")))


def bench_crypto_paths(args: Any) -> list[tuple[str, str, str]]:
    from run import _run_image  # type: ignore[import-not-found]  # tests/bench/run.py (on the path from there)
    rounds = max(5, args.crypto_rounds)
    ours, base, py = [], [], []
    for _ in range(args.repeats):  # interleaved: drift hits both alike
        base.append(in_process(rounds))
        ours.append(_run_image(PATHS_IMAGE.format(rounds=rounds), confine=not args.no_confine))
        py.append(python_per_request(rounds * 40))
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    rows = []
    o, b = med(ours, "aes16_s"), med(base, "aes16_s")
    rows.append(("16 B AES-GCM through the service (direct channel, as in wvds), limiter raised", f"{1 / o:,.0f} ops/s",
                 f"{1 / o / 1000:.1f}x the WvdS limit of 1000/s (goal >= 10x); in-process {1 / b:,.0f} ops/s"))
    mib = 1.0
    o, s, b = med(ours, "ring1m_s"), med(ours, "seq1m_s"), med(base, "ring1m_s")
    rows.append(("AES-GCM 1 MiB in 60 KiB chunks through the request ring (direct channel)", f"{mib / o:.0f} MiB/s",
                 f"ours/in-process = {b / o:.0%} of throughput (goal >= 50 %)"))
    rows.append(("  same, one request per signal (no ring)", f"{mib / s:.0f} MiB/s",
                 f"ours/in-process = {b / s:.0%}"))
    rows.append(("  same in-process (cryptography, 60 KiB per call)", f"{mib / b:.0f} MiB/s", ""))
    for key, name, goal in (("mlkem768_encaps_s", "ML-KEM-768 encaps", 2.0), ("mldsa65_sign_s", "ML-DSA-65 sign", 1.2)):
        o, b = med(ours, key), med(base, key)
        rows.append((f"{name} through the service (direct channel)", f"{o * 1e6:.0f} µs",
                     f"ours/in-process = {o / b:.2f}x (goal <= {goal}x); in-process {b * 1e6:.0f} µs"))
    whole, lib, svc, a = (statistics.median(x[i] for x in py) for i in range(4))
    rows.append(("client + service Python per 16 B request (goal <= 15 µs)", f"{lib + svc:.1f} µs",
                 f"client library {lib:.1f} µs + service side {svc:.1f} µs (shared-memory step, handling, "
                 f"the AES-GCM call of {a:.1f} µs); CPU time"))
    rows.append(("  both in one loop in one process (a fake kernel call between them)", f"{whole:.1f} µs",
                 f"{whole / a:.1f}x the AES-GCM call itself"))
    return rows
