"""Floods the kernel with system calls, forever (the fair-service benchmark and tests).

Args: ``[BURST[,KIND]]``: frames written back to back before the replies are read (default 32;
1 = one call at a time). KIND ``recv`` (default): a receive with a zero timeout (legal: no
violation is recorded), so every frame costs the kernel a full system call and comes back at
once; ``deny``: a call on an empty selector, so every frame is also a recorded, printed violation.
Logs ``flooding`` once, then never stops.
"""
from kernel_model.abi import INVALID_CAP, IpcFlags, MsgTag, timeouts
from kernel_model.wire import Invocation


def main(env) -> int:
    burst, _, kind = (env.args[0] if env.args else "32").partition(",")
    burst = int(burst)
    if kind == "deny":
        frame = Invocation(IpcFlags.CALL, 0x3F0 << 12, MsgTag(0x100, 1), bytes(8), (), timeouts(0, 0)).encode()
    else:
        frame = Invocation(IpcFlags.RECV, INVALID_CAP, MsgTag(0, 0), b"", (), timeouts(0, 0)).encode()
    sock = env.channel.sock
    env.log("flooding")
    while True:
        for _ in range(burst):
            sock.send(frame)
        for _ in range(burst):
            env.channel._recv()
