"""A server that loads a store from its work dir before it binds its gate (the shape of a real service).

``store.json`` holds ``{"value": N, "sha256": hex}``; a missing store starts at 0, a damaged
one (bad JSON, wrong checksum) makes the task say so and exit 2 *before it binds*, as a service
with a damaged key store does. Otherwise it binds ``svc`` and answers every call with the value.

With the argument ``count`` every call increments the value and writes the store durably
(temp file, fsync, rename, directory fsync: ``durable.atomic.atomic_write``) *before* the
reply: an answer the client got is never lost, whenever the task is killed (the reliability
scenario checks this under chaos).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from durable.atomic import atomic_write

STORE = Path("store.json")  # the work dir is the current directory


def digest(value: int) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()


def load(path: Path) -> int:
    if not path.exists():
        return 0
    data = json.loads(path.read_text())
    value = int(data["value"])
    if digest(value) != data["sha256"]:
        raise ValueError("checksum mismatch")
    return value


def save(path: Path, value: int) -> None:
    atomic_write(path, json.dumps({"value": value, "sha256": digest(value)}).encode())


def main(env) -> int:
    counting = "count" in env.args
    try:
        value = load(STORE)
    except (ValueError, KeyError, TypeError) as exc:
        env.log(f"cannot start: store {STORE.name} is damaged ({type(exc).__name__}: {exc})")
        return 2
    env.bind_gate(env.cap("svc"), 0x10)
    env.log(f"serving value {value}")
    msg = env.wait()
    while True:
        if not msg.ok:
            msg = env.wait()
            continue
        if counting:
            value += 1
            save(STORE, value)  # durable before the answer
        msg = env.reply_and_wait(0, value)
