"""Times N kernel-mediated calls to an echo server and logs ``BENCH <json>``."""
import json
import time

from kernel_model.abi import IpcFlags, MsgTag
from kernel_model.wire import Invocation


def main(env) -> int:
    rounds, warmup = int(env.args[0]), int(env.args[1]) if len(env.args) > 1 else 200
    payload = bytes(64)
    gate = env.cap("svc")
    inv = Invocation(IpcFlags.CALL, gate, MsgTag(0x100, len(payload) // 8), payload)
    ipc = env.channel.ipc  # the runtime's own path, minus Msg construction
    for _ in range(warmup):
        ipc(inv)
    samples = []
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            result, _ = ipc(inv)
        samples.append((time.perf_counter_ns() - start) / rounds / 1000)
        assert result.error == 0 and result.data == payload
    env.log("BENCH " + json.dumps({"rtt_us": sorted(samples)[len(samples) // 2], "samples": samples}))
    return 0
