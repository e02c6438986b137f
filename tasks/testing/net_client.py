"""Talks to an endpoint through the network proxy: ``args = [endpoint, text]``; logs ``RESULT``."""
import json

from protocols.netproxy import Op, Request, Status, decode_response
from tasks.runtime.shm import ShmClient


def main(env) -> int:
    endpoint, text = env.args[0], env.args[1]
    net = ShmClient(env, env.cap("net"), env.cap("net_shm"))
    status, _ = decode_response(net.transact(Request(Op.CONNECT, endpoint=endpoint).encode()))
    result = {"connect": status.name}
    if status is Status.OK:
        status, _ = decode_response(net.transact(Request(Op.SEND, data=text.encode()).encode()))
        result["send"] = status.name
        status, data = decode_response(net.transact(Request(Op.RECV, max_bytes=4096, timeout_ms=10_000).encode()))
        result["recv"] = status.name
        result["data"] = data.decode(errors="replace")
        net.transact(Request(Op.CLOSE).encode())
    env.log("RESULT " + json.dumps(result))
    return 0
