"""Times N calls through the whole runtime (``env.ipc``: a direct channel when the kernel granted one) to an
echo server and logs ``BENCH <json>`` with the path the calls took."""
import json
import time

from kernel_model.abi import IpcFlags


def main(env) -> int:
    rounds, warmup = int(env.args[0]), int(env.args[1]) if len(env.args) > 1 else 200
    payload = bytes(64)
    gate = env.cap("svc")
    ipc = env.ipc
    call = IpcFlags.CALL
    for _ in range(warmup):
        ipc(call, gate, 0x100, payload)
    samples = []
    direct_before = env.direct.calls
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            msg = ipc(call, gate, 0x100, payload)
        samples.append((time.perf_counter_ns() - start) / rounds / 1000)
        assert msg.ok and msg.data == payload, msg
    env.log("BENCH " + json.dumps({"rtt_us": sorted(samples)[len(samples) // 2], "samples": samples,
                                   "direct_calls": env.direct.calls - direct_before}))
    return 0
