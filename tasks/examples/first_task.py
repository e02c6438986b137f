import struct


def main(env):
    gate = env.cap("ping")                      # named capability -> selector
    reply = env.call(gate, 0x100, 1, 42)        # protocol 0x100, MR[0]=1 (PING), MR[1]=42
    if not reply.ok or reply.status < 0:        # errors are values: reply.error is an IpcError
        env.log(f"call failed: {reply.error.name}, status {reply.status}")
        return 1
    env.log(f"ping 42 -> {reply.word(0)}")      # the server answers 43

    shm = env.map_dataspace(env.cap("shm"), writable=True)
    done = env.cap("done")
    env.bind_irq(done, 0x30)                    # to receive an IRQ, bind it first (needs s on the cap)
    request = b"request"
    shm.write(0, struct.pack("<I", len(request)) + bytes(4) + request)
    env.trigger(env.cap("kick"))                # IRQ: asynchronous notification
    signal = env.receive(done, timeout_us=10_000_000)
    if not signal.ok:                           # a timeout is a value too: check it
        env.log(f"no answer: {signal.error.name}")
        return 1
    (length,) = struct.unpack("<I", shm.read(2048, 4))   # the answer sits at offset 2048
    env.log("answer: " + shm.read(2048 + 8, length).decode())
    return 0
