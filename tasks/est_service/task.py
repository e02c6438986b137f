"""The est_service task: enrolls the device over EST, renews its certificate, hands it out.

Program ``est_service.task``. What it holds and why (docs/est.md has the full story):

* the **device key** (EC P-256/P-384): generated here, used here (CSR signatures, TLS client
  authentication at re-enrollment), stored here encrypted at rest; it never leaves the task;
* **TLS**: terminated here (`tls_stream.py`); the network proxy only moves ciphertext;
* **no network**: a capability to the network proxy (``net`` + ``net_shm``) is its only way out.

One module per concept: ``config`` (the config keys), ``store`` (the sealed state),
``service`` (``EstService``: state and decisions) and this one, the main loop.

The loop (one thread, no ``time.sleep``): est_service waits for client requests with a kernel
receive timeout that ends when enrollment work is due (the renewal policy's next decision, a
202 ``Retry-After``, or a backoff). When the timeout fires it does the work; while an exchange
is in flight it keeps answering clients between proxy reads (``poll_clients``).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography import x509

from tasks.est_service.config import Config, ConfigError
from tasks.est_service.http_transport import HttpTransport, make_ssl_context
from tasks.est_service.service import EstService
from tasks.est_service.store import KekError, Store
from tasks.est_service.tls_stream import proxy_connector
from tasks.est_service.trust import TrustAnchors
from tasks.runtime.serve import dispatch, serve
from tasks.runtime.shm import ShmClient, bind_peers, shm_calls

MAX_WAIT_US = 24 * 3600 * 1_000_000  # one day: well inside l4_timeout_t's range


def _trust_anchors(env, name: str) -> TrustAnchors:
    region = env.map_dataspace(env.rom(name))
    pem = bytes(region.read(0, region.size)).rstrip(b"\0")
    return TrustAnchors(tuple(x509.load_pem_x509_certificates(pem)))


def start_store(env, cfg: Config, store: Store) -> bool:
    """The degraded modes a start can meet, each with its own log line: temporary files a crash
    left (removed), a KEK of the wrong length and a required but missing state (refused)."""
    try:
        removed = store.clean_temps()
        if removed:
            env.log(f"state: removed {len(removed)} temporary file(s) left by a crash: {', '.join(removed)}")
        store.check_kek()
    except KekError as exc:
        env.log(f"store error: {exc}; refusing to start (nothing could be decrypted or sealed)")
        return False
    except OSError as exc:
        env.log(f"store error: {type(exc).__name__}: {exc}; refusing to start")
        return False
    if cfg.store_required and not store.exists():
        env.log(f"store error: MISSING: no stored state ({store.state_path.name}) and store.required is set: "
                "refusing to start without it")
        return False
    return True


def main(env) -> int:
    try:
        cfg = Config.parse(env.config)
    except (ConfigError, ValueError) as exc:
        env.log(f"config error: {exc}")
        return 2
    try:
        trust = _trust_anchors(env, cfg.trust_anchor_rom)
    except Exception as exc:
        env.log(f"config error: trust anchor rom/{cfg.trust_anchor_rom}: {type(exc).__name__}: {exc}")
        return 2
    # ssl loads client keys only from files (make_ssl_context writes one, encrypted under a
    # one-time password, and removes it at once): keep even that in our private work directory.
    tempfile.tempdir = os.getcwd()
    try:
        # The IPC timeout only guards against a stuck proxy; the proxy bounds its own connect
        # and send (10 s each) and est_service bounds every read by timeout_s.
        net = ShmClient(env, env.cap(cfg.net["gate"]), env.cap(cfg.net["shm"]),
                        timeout_us=int((cfg.timeout_s + 15) * 1_000_000))
        peers = bind_peers(env, cfg.clients)
    except Exception as exc:
        env.log(f"config error: {type(exc).__name__}: {exc}")
        return 2
    service: EstService

    def poll_clients() -> None:
        """Between proxy reads: answer whoever is waiting, without blocking."""
        for _ in range(16):
            msg = env.wait(timeout_us=0)
            if not msg.ok:
                return
            reply = dispatch(env, calls, msg)
            if reply is not None:
                env.reply(reply.status, *reply.words, blob=reply.blob, items=reply.items)

    def transport_for(cert, key, chain) -> HttpTransport:
        context = make_ssl_context(trust.anchors, client_cert=cert, client_key=key, client_chain=chain)
        connect = proxy_connector(net.transact, cfg.endpoint, context, cfg.server.host,
                                  timeout=cfg.timeout_s, area=net.half, idle=poll_clients)
        # TlsOverProxy is duck-typed as a socket: it has what HttpTransport and http.client use of one
        return HttpTransport(connect, timeout=cfg.timeout_s)  # type: ignore[arg-type]

    store = Store(Path.cwd())
    if not start_store(env, cfg, store):
        return 2
    service = EstService(cfg, trust, store, log=env.log, transport_for=transport_for)
    service.load()
    env.log(f"serving {', '.join(p.name for p in peers.values()) or 'nobody'}; EST server "
            f"{cfg.endpoint} (TLS name {cfg.server.host}) through the network proxy; "
            f"trust anchor: {', '.join(a.subject.rfc4514_string() for a in trust.anchors)}")

    calls = shm_calls(peers, service.handle)

    def due_in() -> int:
        """µs until the service's own work (enrollment, renewal, a retry) is due."""
        now = service.clock()
        wake = service.next_wakeup(now)
        return 0 if wake <= now else min(MAX_WAIT_US, max(1, int((wake - now).total_seconds() * 1_000_000)))

    serve(env, calls, due_in=due_in, work=lambda: service.work(service.clock()))
    return 0
