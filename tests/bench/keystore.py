"""``make bench`` section ``keystore`` (``tests/bench/run.py --only keystore``): the crypto
service's three key-storage backends, each next to the File backend, interleaved in one run.

Per backend, through ``CryptoService.handle`` in this process (no IPC, so the numbers are the
backend's cost): key create (KEY_GENERATE AES-256, one store save), key use (AES-GCM 4 KiB
encrypt, and decrypt with its durable replay-journal record), key rotate (KEY_ROTATE, one
save). The TPM is a swtpm on a unix socket, the HSM a SoftHSM2 token: both started here, in a
temporary directory, like the boot does. Baseline row: AES-GCM 4 KiB in-process.
"""
from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.testing.crypto_bench import timed

BACKENDS = ("file", "tpm", "hsm")


def _stores(tmp: Path) -> tuple[dict[str, Callable[[str], dict]], Callable[[], None]]:
    from kernel_model.host.keystore_devices import Swtpm, init_softhsm_token, write_softhsm_conf

    tpm = Swtpm(tmp / "swtpm")
    tpm.start()
    conf = write_softhsm_conf(tmp / "softhsm")
    init_softhsm_token(conf, "bench", "1234")
    (tmp / "pin").write_text("1234")
    (tmp / "kek").write_bytes(os.urandom(32))
    configs = {
        "file": lambda name: {"backend": "file", "path": str(tmp / name), "kek_file": str(tmp / "kek")},
        "tpm": lambda name: {"backend": "tpm", "path": str(tmp / name), "tcti": tpm.tcti},
        "hsm": lambda name: {"backend": "hsm", "path": str(tmp / name), "module": "/usr/lib/softhsm/libsofthsm2.so",
                             "token_label": "bench", "pin_file": str(tmp / "pin"), "softhsm2_conf": str(conf)},
    }
    return configs, tpm.close


def _measure(config: dict, rounds: int) -> dict[str, float]:
    from protocols import crypto as p
    from protocols.crypto import KeyType
    from tasks.crypto_service.service import CryptoService

    svc = CryptoService({"storage": config, "rate_limit": {"enabled": False}})
    if svc.store_error is not None:
        raise RuntimeError(f"{config['backend']}: {svc.store_error}")

    def request(req: Any) -> Any:
        status, body = p.parse_response(svc.handle(req.encode()), req.TYPE)
        if status != p.Status.SUCCESS:
            raise RuntimeError(f"{config['backend']} {req.TYPE.name}: {status!r}")
        return body

    kid = request(p.KeyGenerateRequest(0, KeyType.AES_256)).info.key_id
    data = os.urandom(4096)
    sealed = [request(p.AesEncryptRequest(kid, b"", data)) for _ in range(6 * rounds + 1)]
    it = iter(sealed)
    out = {
        "create": timed(lambda: request(p.KeyGenerateRequest(0, KeyType.AES_256)), rounds),
        "encrypt4k": timed(lambda: request(p.AesEncryptRequest(kid, b"", data)), rounds),
        "decrypt4k": timed(lambda: (lambda e: request(p.AesDecryptRequest(kid, b"", e.nonce, e.ciphertext, e.tag)))(
            next(it)), rounds),
        "rotate": timed(lambda: request(p.KeyRotateRequest(kid)), rounds),
    }
    svc.close()
    return out


def bench_keystore(args: Any) -> list[tuple[str, str, str]]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    rounds = max(5, args.crypto_rounds // 2)
    runs: dict[str, list[dict[str, float]]] = {b: [] for b in BACKENDS}
    base: list[float] = []
    with tempfile.TemporaryDirectory(prefix="l4ks-bench-") as tmp:
        configs, stop = _stores(Path(tmp))
        try:
            for repeat in range(args.repeats):  # interleaved: drift hits every backend alike
                aes, data = AESGCM(os.urandom(32)), os.urandom(4096)
                base.append(timed(lambda aes=aes, data=data: aes.encrypt(os.urandom(12), data, b""), rounds * 10))
                for backend in BACKENDS:
                    runs[backend].append(_measure(configs[backend](f"{backend}-{repeat}.store"), rounds))
        finally:
            stop()
    med = {b: {k: statistics.median(r[k] for r in runs[b]) for k in runs[b][0]} for b in BACKENDS}
    names = {"create": "key create (KEY_GENERATE AES-256, 1 save)", "encrypt4k": "AES-GCM 4 KiB encrypt",
             "decrypt4k": "AES-GCM 4 KiB decrypt (+ replay journal record)",
             "rotate": "key rotate (KEY_ROTATE, 1 save)"}
    rows = []
    for op, title in names.items():
        file_s = med["file"][op]
        rows.append((f"{title}, File backend", f"{file_s * 1e6:.0f} µs", ""))
        for backend in ("tpm", "hsm"):
            s = med[backend][op]
            rows.append((f"  {backend.upper()} backend", f"{s * 1e6:.0f} µs", f"{backend}/file = {s / file_s:.2f}x"))
    b = statistics.median(base)
    rows.append(("  AES-GCM 4 KiB in-process (cryptography), baseline", f"{b * 1e6:.1f} µs",
                 f"file/in-process = {med['file']['encrypt4k'] / b:.1f}x"))
    return rows
