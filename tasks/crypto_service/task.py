"""The crypto service task: the WvdS crypto service behind kernel IPC and shared dataspaces.

Image config::

    config:
      clients:                 # one gate + one shared dataspace per client
        gateway: {gate: crypto_gw, shm: crypto_gw_shm,
                  allow: [AES_ENCRYPT, AES_DECRYPT]}   # optional per-operation allowlist
      service_rom: crypto-config   # optional: a config.json boot module (WvdS delivery style)
      service: {...}               # or the service config inline (ServiceConfig keys)
      devices: {...}               # for the boot: the swtpm / SoftHSM2 token it starts (keystore_devices)

Every client has its own key namespace: one ``CryptoService`` per client, each
with its own store (``storage.path`` gets ``.<client>`` appended; a TPM
``nv_index`` gets the client's position among the sorted client names added),
rate limit and nonce trackers, so a client can only ever name its own keys (no
confused deputy, docs/violations.md). A client's ``allow`` list limits
the request types it may send; others get POLICY_DENIED (0x40) after the rate
limiter and the header checks (V15; docs/crypto_protocol.md). Secrets come
from boot modules: ``storage.kek_rom`` (File backend: the 32-byte KEK) and
``storage.pin_rom`` (HSM backend: the token's user PIN), both needing the
``rom`` capability. Paths are relative to the task's private work directory.
The five-step flow and the area layout are ``tasks.runtime.shm``'s. Clients are
told apart by the kernel-set gate label (per-client rate limits); nothing a
client sends can claim another client's identity. A key store that cannot be
loaded (damaged, missing but required, a bad KEK module, an absent device)
does not stop the task: that client gets STORAGE_ERROR and the log says why
(``load_services``); the other clients are served (docs/crypto_keystore.md).
"""
from __future__ import annotations

import json
import os

from protocols.crypto import RequestType
from tasks.crypto_service.backends import open_keystore
from tasks.crypto_service.keystore import KEK_SIZE, UnavailableStore, check_kek
from tasks.crypto_service.service import CryptoService, ServiceConfig
from tasks.runtime.serve import serve
from tasks.runtime.shm import bind_peers, shm_calls


def read_rom(env, name: str) -> bytes:
    rom = env.rom(name)
    size = env.dataspace_size(rom)
    return env.map_dataspace(rom).read(0, size)


def service_config(env) -> dict:
    cfg = dict(env.config.get("service", {}))
    if "service_rom" in env.config:
        cfg = {**json.loads(read_rom(env, env.config["service_rom"]).decode()), **cfg}
    return cfg


def client_storage(storage: dict, client: str, position: int) -> dict:
    """The storage config of one client's key namespace."""
    storage = dict(storage)
    if storage.get("backend") in ("file", "tpm", "hsm") and "path" in storage:
        storage["path"] = f"{storage['path']}.{client}"
    if storage.get("backend") == "tpm" and isinstance(storage.get("nv_index"), int):
        storage["nv_index"] += position
    return storage


def load_service(env, cfg: dict, client: str, position: int = 0, allowed: frozenset[int] | None = None,
                 log=None) -> CryptoService:
    """The service instance (and key namespace) of one client."""
    cfg = dict(cfg)
    storage = client_storage(cfg.pop("storage", {"backend": "memory"}), client, position)
    kek = pin = None
    if "kek_rom" in storage:
        name = storage.pop("kek_rom")
        kek = bytearray(read_rom(env, name)[:KEK_SIZE + 1])
        try:
            check_kek(kek, f"the KEK boot module {name!r}" + (" (or more)" if len(kek) > KEK_SIZE else ""))
        finally:
            if len(kek) != KEK_SIZE:
                kek[:] = bytes(len(kek))
    if "pin_rom" in storage:
        pin = read_rom(env, storage.pop("pin_rom")).decode().strip()
    try:
        store = open_keystore(storage, os.urandom, kek=kek, pin=pin)  # consumes (zeroes) kek
    finally:
        if kek is not None:
            kek[:] = bytes(len(kek))
    return CryptoService(cfg, store=store, allowed=allowed, log=log)


def allowlist(names: list[str] | None) -> frozenset[int] | None:
    if names is None:
        return None
    return frozenset(int(RequestType[name]) for name in names)


def load_services(env, cfg: dict, clients: dict) -> dict[str, CryptoService]:
    """One service per client. Failures stay local: a client whose key store cannot be opened
    or loaded gets a service that answers STORAGE_ERROR (and a log line saying why); the other
    clients are served. Each client's store state is logged: loaded, MISSING (started empty)
    or UNAVAILABLE."""
    services = {}
    for position, (name, spec) in enumerate(sorted(clients.items())):
        log = (lambda client: lambda line: env.log(f"[{client}] {line}"))(name)
        allowed = allowlist(spec.get("allow"))
        try:
            service = load_service(env, cfg, name, position, allowed, log)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            service = CryptoService({k: v for k, v in cfg.items() if k != "storage"},
                                    store=UnavailableStore(reason), allowed=allowed, log=log)
        services[name] = service
        if service.store_error is not None:
            log(f"key store UNAVAILABLE: this client gets STORAGE_ERROR, the others are served "
                f"({service.store_error})")
        elif getattr(service.store, "missing", False):
            log(f"key store MISSING: started with an empty one ({service.key_count} key(s))")
        else:
            log(f"key store loaded: {service.key_count} key(s)")
    return services


def main(env) -> int:
    clients = env.config.get("clients", {})
    try:
        cfg = service_config(env)
        ServiceConfig.from_dict(cfg)  # a bad service config stops the task; a bad store does not
        for spec in clients.values():
            allowlist(spec.get("allow"))
    except Exception as exc:
        env.log(f"cannot start: {type(exc).__name__}: {exc}")
        return 2
    services = load_services(env, cfg, clients)
    peers = bind_peers(env, {name: {"gate": spec["gate"], "shm": spec["shm"]} for name, spec in clients.items()})
    backend = cfg.get("storage", {}).get("backend", "memory")
    env.log(f"serving {', '.join(sorted(clients))}, each with its own key namespace ({backend} key storage)")
    serve(env, shm_calls(peers, lambda peer, request: services[peer.name].handle_parts(request), ring=True))
    return 0
