"""Load for the reliability scenario: N requests to ``svc``, each retried until answered with a value.

Every attempt is a call with a long receive timeout that is a hang guard, not a pace: an attempt
that gets neither a reply nor an error from the kernel within it is a *lost response*. A server
that is down answers ``L4_IPC_ENOT_EXISTENT`` (the kernel, at once): the client backs off a few
milliseconds in the kernel and retries. Each value answered must be larger than the last one
this client saw (the server's count is durable: a regression is a lost acknowledged write).

Args: ``N`` [``until-recovered``: keep going past N until an error was followed by an answer].
Logs ``RESULT {json}`` once at the end.
"""
from __future__ import annotations

import json

from kernel_model.abi import IpcError, IpcFlags

GUARD_US = 30_000_000
RETRY_US = 5_000
MAX_RETRIES = 4_000  #: a server down for good: the request is abandoned after this many ENOT_EXISTENT
REQUEST = (1).to_bytes(8, "little")


def main(env) -> int:
    want = int(env.args[0])
    until_recovered = "until-recovered" in env.args
    svc = env.cap("svc")
    stats = {"requests": 0, "attempts": 0, "ok": 0, "enot_existent": 0, "lost": 0, "other": 0, "regressions": 0,
             "last": 0, "recovered": False, "abandoned": 0}
    failed_since_ok = False
    while stats["ok"] < want or (until_recovered and not stats["recovered"]):
        stats["requests"] += 1
        for _retry in range(MAX_RETRIES):
            stats["attempts"] += 1
            msg = env.ipc(IpcFlags.CALL, svc, 0x100, REQUEST, send_timeout_us=GUARD_US, recv_timeout_us=GUARD_US)
            if msg.ok:
                value = msg.word(0) if msg.has_words(1) else msg.status
                stats["ok"] += 1
                if value <= stats["last"]:
                    stats["regressions"] += 1
                stats["last"] = max(stats["last"], value)
                if failed_since_ok:
                    stats["recovered"] = True
                failed_since_ok = False
                break
            if msg.error is IpcError.ENOT_EXISTENT:
                stats["enot_existent"] += 1
                failed_since_ok = True
                env.sleep(RETRY_US)
                continue
            if msg.error in (IpcError.SETIMEOUT, IpcError.RETIMEOUT):
                stats["lost"] += 1
            else:
                stats["other"] += 1
            break
        else:
            stats["abandoned"] += 1
            break
    env.log("RESULT " + json.dumps(stats))
    return 0

