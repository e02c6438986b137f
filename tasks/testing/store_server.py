"""A server that loads a store from its work dir before it binds its gate (the shape of a real service).

``store.json`` holds ``{"value": N, "sha256": hex}``; a missing store starts at 0, a damaged
one (bad JSON, wrong checksum) makes the task say so and exit 2 *before it binds*, as a service
with a damaged key store does. Otherwise it binds ``svc`` and answers every call with the value.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def load(path: Path) -> int:
    if not path.exists():
        return 0
    data = json.loads(path.read_text())
    value = int(data["value"])
    if hashlib.sha256(str(value).encode()).hexdigest() != data["sha256"]:
        raise ValueError("checksum mismatch")
    return value


def main(env) -> int:
    store = Path("store.json")  # the work dir is the current directory
    try:
        value = load(store)
    except (ValueError, KeyError, TypeError) as exc:
        env.log(f"cannot start: store {store.name} is damaged ({type(exc).__name__}: {exc})")
        return 2
    env.bind_gate(env.cap("svc"), 0x10)
    env.log(f"serving value {value}")
    msg = env.wait()
    while True:
        msg = env.reply_and_wait(0, value) if msg.ok else env.wait()
