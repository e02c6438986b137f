"""Hostile peers on a direct channel (tests/capability_violations/test_direct_hostile_peers.py).

``garbage``: a client that gets a channel (one call through the kernel), then writes on its end what
no runtime would: a short frame, an oversized one, wrong word counts, a bad flag, a frame carrying an
fd. ``noread``: a client that writes requests and never reads a reply until its end is closed.
``liar``: a server whose first three replies on direct ends are garbage; ``count``: an honest client
that makes 20 calls. Each logs ``RESULT {json}``.
"""
from __future__ import annotations

import array
import json
import select
import socket
import struct

from kernel_model.abi import MR_BYTES, IpcFlags

_HEAD = struct.Struct("<qHH")


def main(env) -> int:
    role = env.args[0]
    return {"garbage": _garbage, "noread": _noread, "liar": _liar, "count": _count}[role](env)


def _count(env) -> int:
    """An honest client: 20 calls, each echo checked; logs the outcome of each."""
    svc = env.cap("svc")
    outcomes = []
    for i in range(20):
        msg = env.call(svc, 0x100, i)
        outcomes.append(msg.error.name if not msg.ok else ("OK" if msg.data == struct.pack("<Q", i) else "WRONG"))
    _result(env, outcomes=outcomes)
    return 0


def _result(env, **fields) -> None:
    env.log("RESULT " + json.dumps(fields))


def _end(env, svc: int) -> socket.socket | None:
    end = env.direct.clients.get(svc)
    return end.sock if end is not None else None


def _closed_by_peer(sock: socket.socket) -> bool:
    """Did the peer close (or shut down) the channel? Reads what is there until EOF."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    for _ in range(64):
        if not poller.poll(30_000):
            return False
        try:
            if not sock.recv(1 << 16):
                return True
        except OSError:
            return True
    return False


def _garbage(env) -> int:
    svc = env.cap("svc")
    out: dict[str, object] = {}
    frames = {
        "short": b"\x01\x02\x03",
        "oversized": _HEAD.pack(0x100, 63, 0) + bytes(MR_BYTES + 64),
        "words": _HEAD.pack(0x100, 5, 0) + bytes(8),
        "flags": _HEAD.pack(0x100, 1, 0x1) + bytes(8),
        "label": struct.pack("<QHH", 1 << 63, 1, 0) + bytes(8),
        "fd": None,
    }
    for name, frame in frames.items():
        first = env.call(svc, 0x100, 1)  # through the kernel (no end yet) or the channel: either opens one
        sock = _end(env, svc)
        if not first.ok or sock is None:
            out[name] = f"no channel ({first.error.name})"
            continue
        try:
            if frame is None:  # a well-formed request carrying one of our fds
                sock.sendmsg([_HEAD.pack(0x100, 1, 0) + bytes(8)],
                             [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))])
                reply = sock.recv(1 << 16)
                out[name] = "answered" if reply and len(reply) >= _HEAD.size else "closed"
                continue
            sock.send(frame)
        except OSError as exc:
            out[name] = f"send failed: {exc.__class__.__name__}"
            continue
        out[name] = "closed" if _closed_by_peer(sock) else "still open"
        env.direct.drop_client(svc)
    after = env.call(svc, 0x100, 7, 8)
    out["after"] = [after.error.name, list(after.data)]
    _result(env, **out)
    return 0


def _noread(env) -> int:
    svc = env.cap("svc")
    env.call(svc, 0x100, 1)
    sock = _end(env, svc)
    if sock is None:
        _result(env, sent=0, outcome="no channel")
        return 0
    sent, outcome = 0, "never stopped"
    for _ in range(1_000_000):
        try:
            sock.send(_HEAD.pack(0x100, 1, 0) + bytes(8), socket.MSG_DONTWAIT)
            sent += 1
        except BlockingIOError:  # our requests fill the server's end: it is not reading any more
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLOUT)
            if not poller.poll(30_000):
                outcome = "blocked"
                break
        except OSError as exc:
            outcome = exc.__class__.__name__
            break
    env.direct.drop_client(svc)
    after = env.call(svc, 0x100, 7)
    _result(env, sent=sent, outcome=outcome, after=after.error.name)
    return 0


def _liar(env) -> int:
    env.bind_gate(env.cap("svc"), 0x10)
    env.log("ready")
    lies = 0
    msg = env.ipc(IpcFlags.WAIT)
    while True:
        if not msg.ok:
            msg = env.wait()
            continue
        if env.direct.reply_end is not None and lies < 3:  # a request from a direct end: lie on it
            end = env.direct.reply_end
            end.sock.send([b"\x00", _HEAD.pack(0, 9, 0), _HEAD.pack(0, 0, 0xEE)][lies])
            lies += 1
            env.direct.reply_end = None
            msg = env.wait()
            continue
        msg = env.reply_and_wait(0, *[msg.word(i) for i in range(len(msg.data) // 8)])
