"""Calls each named gate with NO timeout and logs ``RESULT {json}`` with what came back.

A call without a timeout returns only when the server answers or the kernel says the partner
is gone: this client is how the tests show that no caller hangs on a dead or never-started
service. Args: cap names (a name twice = call it again, as a later caller would).
"""
from __future__ import annotations

import json


def main(env) -> int:
    for name in env.args:
        msg = env.call(env.cap(name), 0x100, 1)  # timeout None: wait for ever, unless the kernel answers
        env.log("RESULT " + json.dumps({"cap": name, "error": msg.error.name,
                                        "status": msg.status if msg.ok else None}))
    return 0
