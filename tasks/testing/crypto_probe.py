"""Sends raw WvdS request frames to the crypto service and logs each response.

The frames come from a boot module (``args[0]`` names it): a JSON list of
``{"hex": "...", "repeat": n}``. Each entry logs ``RESULT {"i", "status",
"statuses" (for repeats), "response" (hex, when short)}``. ``args[1]`` (optional)
names the gate/shm caps prefix (default ``crypto``); an entry's ``via`` picks another one
(one task holding two gates is two clients to the service).
"""
import collections
import json

from tasks.runtime.shm import ShmClient


def main(env) -> int:
    rom = env.rom(env.args[0])
    size = env.dataspace_size(rom)
    script = json.loads(env.map_dataspace(rom).read(0, size).decode())
    prefix = env.args[1] if len(env.args) > 1 else "crypto"
    clients: dict[str, ShmClient] = {}
    for i, entry in enumerate(script):
        via = entry.get("via", prefix)  # which of our crypto capabilities (gates) to use
        if via not in clients:
            clients[via] = ShmClient(env, env.cap(via), env.cap(f"{via}_shm"), timeout_us=30_000_000)
        client = clients[via]
        frame = bytes.fromhex(entry["hex"])
        statuses: collections.Counter[int] = collections.Counter()
        response = b""
        for _ in range(entry.get("repeat", 1)):
            response = client.transact(frame)
            statuses[response[2] if len(response) > 2 else -1] += 1
        env.log("RESULT " + json.dumps({
            "i": i, "status": response[2] if len(response) > 2 else -1,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "magic": response[0] if response else -1,
            "response": response.hex() if len(response) <= 4096 else None,
        }))
    return 0
