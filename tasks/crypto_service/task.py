"""The crypto service task: the WvdS crypto service behind kernel IPC and shared dataspaces.

Image config::

    config:
      clients:                 # one gate + one shared dataspace per client
        gateway: {gate: crypto_gw, shm: crypto_gw_shm,
                  allow: [AES_ENCRYPT, AES_DECRYPT]}   # optional per-operation allowlist
      service_rom: crypto-config   # optional: a config.json boot module (WvdS delivery style)
      service: {...}               # or the service config inline (ServiceConfig keys)

Every client has its own key namespace: one ``CryptoService`` per client, each
with its own store (``storage.path`` gets ``.<client>`` appended), rate limit
and nonce trackers, so a client can only ever name its own keys (no confused
deputy, capability-systems.md V11). A client's ``allow`` list limits the
request types it may send; others get POLICY_DENIED (0x40) after the header
checks (V15). For the file key store, ``storage.kek_rom`` names the boot module
holding the 32-byte key-encryption key (``rom`` capability needed);
``storage.path`` is relative to the task's private work directory. The five-step flow and the
area layout are ``tasks.runtime.shm``'s. Clients are told apart by the
kernel-set gate label (per-client rate limits); nothing a client sends can
claim another client's identity.
"""
from __future__ import annotations

import json
import os

from tasks.crypto_service.keystore import KEK_SIZE, FileKeyStore
from tasks.crypto_service.protocol import (HEADER_SIZE, REQUEST_MAGIC, VERSION, RequestType, Status,
                                           encode_response)
from tasks.crypto_service.service import CryptoService
from tasks.runtime.shm import bind_peers, serve_shm


KNOWN_TYPES = frozenset(int(t) for t in RequestType)


def read_rom(env, name: str) -> bytes:
    rom = env.rom(name)
    size = env.dataspace_size(rom)
    return env.map_dataspace(rom).read(0, size)


def service_config(env) -> dict:
    cfg = dict(env.config.get("service", {}))
    if "service_rom" in env.config:
        cfg = {**json.loads(read_rom(env, env.config["service_rom"]).decode()), **cfg}
    return cfg


def load_service(env, cfg: dict, client: str) -> CryptoService:
    """The service instance (and key namespace) of one client."""
    cfg = dict(cfg)
    storage = dict(cfg.get("storage", {}))
    if storage.get("backend") == "file":
        storage["path"] = f"{storage['path']}.{client}"
    if storage.get("backend") == "file" and "kek_rom" in storage:
        kek = bytearray(read_rom(env, storage.pop("kek_rom"))[:KEK_SIZE])
        if len(kek) != KEK_SIZE:
            raise ValueError(f"the KEK boot module must hold {KEK_SIZE} bytes")
        try:
            store = FileKeyStore(storage["path"], bytearray(kek), os.urandom)
        finally:
            kek[:] = bytes(KEK_SIZE)
        cfg.pop("storage")
        return CryptoService(cfg, store=store)
    if storage:
        cfg["storage"] = storage
    return CryptoService(cfg)


def allowlist(names: list[str] | None) -> frozenset[int] | None:
    if names is None:
        return None
    return frozenset(int(RequestType[name]) for name in names)


def gatekeeper(service: CryptoService, allowed: frozenset[int] | None):
    """``handle`` with the client's allowlist applied after the header checks the service does first."""
    def handle(request: bytes) -> bytes:
        if allowed is not None and len(request) >= HEADER_SIZE and request[0] == REQUEST_MAGIC \
                and request[1] == VERSION and request[2] in KNOWN_TYPES and request[2] not in allowed:
            return encode_response(Status.POLICY_DENIED)
        return service.handle(request)
    return handle


def main(env) -> int:
    clients = env.config.get("clients", {})
    try:
        cfg = service_config(env)
        handlers = {name: gatekeeper(load_service(env, cfg, name), allowlist(spec.get("allow")))
                    for name, spec in clients.items()}
    except Exception as exc:  # noqa: BLE001 - a service that cannot start says why and exits
        env.log(f"cannot start: {type(exc).__name__}: {exc}")
        return 2
    peers = bind_peers(env, {name: {"gate": spec["gate"], "shm": spec["shm"]} for name, spec in clients.items()})
    env.log(f"serving {', '.join(sorted(clients))}, each with its own key namespace")
    serve_shm(env, peers, lambda peer, request: handlers[peer.name](request))
    return 0
