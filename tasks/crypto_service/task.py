"""The crypto service task: the WvdS crypto service behind kernel IPC and shared dataspaces.

Image config::

    config:
      clients:                 # one gate + one shared dataspace per client
        gateway: {gate: crypto_gw, shm: crypto_gw_shm}
      service_rom: crypto-config   # optional: a config.json boot module (WvdS delivery style)
      service: {...}               # or the service config inline (tasks.crypto_service.service.ServiceConfig)

Relative storage paths are relative to the task's work directory. The
five-step flow and the area layout are ``tasks.runtime.shm``'s. Clients are
told apart by the kernel-set gate label: per-client rate limits and nothing a
client sends can claim another client's identity.
"""
from __future__ import annotations

import json

from tasks.crypto_service.service import CryptoService
from tasks.runtime.shm import bind_peers, serve_shm


def load_config(env) -> dict:
    cfg = dict(env.config.get("service", {}))
    if "service_rom" in env.config:
        rom = env.rom(env.config["service_rom"])
        size = env.dataspace_size(rom)
        cfg = {**json.loads(env.map_dataspace(rom).read(0, size).decode()), **cfg}
    return cfg


def main(env) -> int:
    try:
        service = CryptoService(load_config(env))
    except Exception as exc:  # noqa: BLE001 - a service that cannot start says why and exits
        env.log(f"cannot start: {exc}")
        return 2
    peers = bind_peers(env, env.config.get("clients", {}))
    env.log(f"serving {', '.join(p.name for p in peers.values())} ({service.key_count} key(s) loaded)")
    serve_shm(env, peers, lambda peer, request: service.handle(request, client=peer.name))
    return 0
