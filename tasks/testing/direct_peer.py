"""The three parties of a revocation mid-conversation on a direct channel (tests/system/test_direct_revocation.py).

``server``: binds ``svc`` and answers every call ``(n, seen)`` with ``n``; a request sent after the
client saw the marker (``seen`` = 1) is logged ``SERVED n label L via direct|kernel``.

``client``: gets its ``svc`` capability from the revoker (a child of the revoker's, so the revoker
can unmap or reduce it) unless ``own`` is given, then streams numbered calls ``(n, seen)`` where
``seen`` is the marker word of the ``flag`` dataspace read just before the call. After 20 calls on
the direct channel it triggers ``go``; every call made after it saw the marker is logged ``CALL n
error E status S via direct|kernel``; 4 of them, then it exits 0.

``revoker OP``: serves ``rv`` (hands out the capability), waits for ``go``, does ``OP`` on ``svc``
(unmap, reduce, delete, rebind, gone, retire), then writes the marker (its operation has
returned) and logs ``MARKER``. After ``rebind`` it answers every call on ``svc`` with status 77.
"""
from __future__ import annotations

import json
import struct

from capabilities.rights import CapRights
from kernel_model.abi import GateOp, Proto, TaskOp, UnmapMask, sel
from kernel_model.wire import Item, ItemKind

GIVE = 1
REBOUND = 77


def main(env) -> int:
    role = env.args[0]
    if role == "server":
        return _server(env)
    if role == "client":
        return _client(env)
    if role == "survivor":
        return _survivor(env)
    return _revoker(env, env.args[1])


def _server(env) -> int:
    if env.has("shm"):
        env.map_dataspace(env.cap("shm"), writable=True)
    if env.bind_gate(env.cap("svc"), 0x10) < 0:
        return 2
    env.log("ready")
    msg = env.wait()
    while True:
        if not msg.ok or not msg.has_words(2):
            msg = env.wait()
            continue
        n, seen = msg.word(0), msg.word(1)
        if seen:
            via = "direct" if env.direct.reply_end is not None else "kernel"
            env.log(f"SERVED {n} label {msg.label:#x} via {via}")
        msg = env.reply_and_wait(0, n)


def _client(env) -> int:
    if "own" in env.args:
        svc = env.cap("svc")
    else:
        svc = env.alloc_slot()
        env.call(env.cap("rv"), 0x200, GIVE, rcv_cap=svc).check("get svc from the revoker")
    flag = env.map_dataspace(env.cap("flag"))
    if env.has("shm"):
        env.map_dataspace(env.cap("shm"), writable=True)
    go = env.cap("go")
    after = 0
    n = 0
    while after < 4:
        n += 1
        seen = struct.unpack("<Q", flag.read(0, 8))[0]
        before = env.direct.calls
        msg = env.call(svc, 0x100, n, 1 if seen else 0, timeout_us=10_000_000)
        via = "direct" if env.direct.calls > before else "kernel"
        if seen:
            after += 1
            env.log(f"CALL {n} error {msg.error.name} status {msg.status} via {via}")
        elif not msg.ok:
            env.log(f"EARLY {n} error {msg.error.name} via {via}")
        if env.direct.calls == 20 and via == "direct":
            env.trigger(go)
        if n > 200_000:
            env.log("no marker")
            return 1
    return 0


def _survivor(env) -> int:
    """Streams calls on ``svc`` through its server's death (the test kills it) until 4 calls succeed after
    the first failure; logs ``STREAMING`` once 20 calls went over the channel, then ``RESULT {json}``."""
    svc = env.cap("svc")
    errors: list[str] = []
    after = n = 0
    while after < 4 and n < 1_000_000:
        n += 1
        msg = env.call(svc, 0x100, n, 0, timeout_us=10_000_000)
        if env.direct.calls == 20 and n >= 20 and not errors and after == 0:
            env.log("STREAMING")
            after = -1  # said once
        if not msg.ok:
            errors.append(msg.error.name)
        elif errors:
            after = max(after, 0) + 1
    env.log("RESULT " + json.dumps({"errors": sorted(set(errors)), "n_errors": len(errors), "after": after}))
    return 0


def _revoker(env, op: str) -> int:
    svc, rv = env.cap("svc"), env.cap("rv")
    flag = env.map_dataspace(env.cap("flag"), writable=True)
    shm = env.map_dataspace(env.cap("shm"), writable=True) if op == "retire" else None
    env.bind_gate(rv, 0x20)
    env.bind_irq(env.cap("go"), 0x40)
    msg = env.wait()
    while True:  # hand out the client's capability (a child of ours), then wait for go
        if msg.ok and msg.label & ~3 == 0x20:
            msg = env.reply_and_wait(0, items=[Item.obj(svc, int(CapRights.R | CapRights.W))])
            continue
        if msg.ok and msg.label == 0x40:
            break
        msg = env.wait()
    task = sel(1)  # EnvSlot.TASK
    rights = int(CapRights.R | CapRights.W | CapRights.S)
    if op == "unmap":
        status = env.call(task, Proto.TASK, TaskOp.UNMAP, UnmapMask.OTHER_SPACES, ItemKind.OBJECT, svc, 1,
                          rights).status
    elif op == "reduce":
        status = env.call(task, Proto.TASK, TaskOp.UNMAP, UnmapMask.OTHER_SPACES, ItemKind.OBJECT, svc, 1,
                          int(CapRights.W)).status
    elif op == "delete":
        status = env.call(task, Proto.TASK, TaskOp.UNMAP, UnmapMask.DELETE_OBJ, ItemKind.OBJECT, svc, 1,
                          int(CapRights.parse("svr"))).status
    elif op == "rebind":
        status = env.bind_gate(svc, 0x30)
    elif op == "gone":
        status = env.call(svc, Proto.KOBJECT, GateOp.SERVER_GONE).status
    elif op == "retire":
        assert shm is not None
        status = env.unmap(shm)  # it still has the dataspace mapped: the backing is retired and replaced
    else:
        raise ValueError(op)
    flag.write(0, struct.pack("<Q", 1))  # the operation has returned: the marker
    env.log(f"MARKER {op} status {status}")
    if op == "rebind":
        msg = env.wait()
        while True:
            msg = env.reply_and_wait(REBOUND) if msg.ok else env.wait()
    while True:
        env.sleep(1_000_000)
    return 0

