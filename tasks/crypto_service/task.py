"""The crypto service task: the WvdS crypto service behind kernel IPC and shared dataspaces.

Image config::

    config:
      clients:                 # one gate + one shared dataspace per client
        gateway: {gate: crypto_gw, shm: crypto_gw_shm}
      service_rom: crypto-config   # optional: a config.json boot module (WvdS delivery style)
      service: {...}               # or the service config inline (ServiceConfig keys)

For the file key store, ``storage.kek_rom`` names the boot module holding the
32-byte key-encryption key (``rom`` capability needed); ``storage.path`` is
relative to the task's private work directory. The five-step flow and the
area layout are ``tasks.runtime.shm``'s. Clients are told apart by the
kernel-set gate label (per-client rate limits); nothing a client sends can
claim another client's identity.
"""
from __future__ import annotations

import json
import os

from tasks.crypto_service.keystore import KEK_SIZE, FileKeyStore
from tasks.crypto_service.service import CryptoService
from tasks.runtime.shm import bind_peers, serve_shm


def read_rom(env, name: str) -> bytes:
    rom = env.rom(name)
    size = env.dataspace_size(rom)
    return env.map_dataspace(rom).read(0, size)


def load_service(env) -> CryptoService:
    cfg = dict(env.config.get("service", {}))
    if "service_rom" in env.config:
        cfg = {**json.loads(read_rom(env, env.config["service_rom"]).decode()), **cfg}
    storage = dict(cfg.get("storage", {}))
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
    return CryptoService(cfg)


def main(env) -> int:
    try:
        service = load_service(env)
    except Exception as exc:  # noqa: BLE001 - a service that cannot start says why and exits
        env.log(f"cannot start: {type(exc).__name__}: {exc}")
        return 2
    peers = bind_peers(env, env.config.get("clients", {}))
    env.log(f"serving {', '.join(p.name for p in peers.values())} ({service.key_count} key(s) loaded)")
    serve_shm(env, peers, lambda peer, request: service.handle(request, client=peer.name))
    return 0
