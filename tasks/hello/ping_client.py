"""hello's client: N calls to the server, one request through shared memory + IRQs, one rom module."""
from __future__ import annotations

from tasks.hello.protocol import DONE_LABEL, PING_PROTO, RESPONSE_OFFSET, SHM_HEADER, SHM_HEADER_SIZE, PingOp


def main(env) -> int:
    count = int(env.args[0]) if env.args else 5
    gate = env.cap("ping")
    for i in range(count):
        reply = env.call(gate, PING_PROTO, PingOp.PING, i)
        if not reply.ok or reply.status < 0 or reply.word(0) != i + 1:
            env.log(f"call {i} failed: {reply.error.name} status {reply.status}")
            return 1
    env.log(f"{count} calls answered")

    greeting = env.map_dataspace(env.rom("greeting"))
    env.log("rom/greeting says: " + bytes(greeting.read(0, 64)).rstrip(b"\0\n").decode())

    shm = env.map_dataspace(env.cap("shm"), writable=True)
    done = env.cap("done")
    if env.bind_irq(done, DONE_LABEL) < 0:
        env.log("cannot bind the done IRQ")
        return 1
    text = b"hello through shared memory"
    shm.write(0, SHM_HEADER.pack(len(text)) + text)
    env.trigger(env.cap("kick"))
    signal = env.receive(done, timeout_us=10_000_000)
    if not signal.ok:
        env.log(f"no answer signal: {signal.error.name}")
        return 1
    (length,) = SHM_HEADER.unpack_from(shm.read(RESPONSE_OFFSET, SHM_HEADER_SIZE), 0)
    answer = shm.read(RESPONSE_OFFSET + SHM_HEADER_SIZE, length).decode()
    env.log(f"server answered through shared memory: {answer}")
    return 0 if answer == text.decode().upper() else 1
