"""hello's server: answers pings on its gate, and requests that arrive through shared memory + IRQ."""
from __future__ import annotations

from protocols.layout import DecodeError
from tasks.hello.protocol import (
    KICK_LABEL,
    PING_PROTO,
    RESPONSE_OFFSET,
    SERVER_LABEL,
    SHM_HEADER,
    SHM_HEADER_SIZE,
    PingOp,
)
from tasks.runtime.errors import Err
from tasks.runtime.serve import Reply, serve


def main(env) -> int:
    shm = env.map_dataspace(env.cap("shm"), writable=True)
    if env.bind_irq(env.cap("kick"), KICK_LABEL) < 0:
        env.log("cannot bind the kick IRQ")
        return 1
    if env.bind_gate(env.cap("ping"), SERVER_LABEL) < 0:
        env.log("cannot bind the ping gate")
        return 1
    env.log("ready: serving pings and shared-memory requests")
    served = 0

    def handle(msg) -> Reply | None:
        nonlocal served
        if msg.label & ~3 == SERVER_LABEL:
            if msg.proto == PING_PROTO and msg.has_words(2) and msg.word(0) == PingOp.PING:
                served += 1
                return Reply(0, (msg.word(1) + 1,), b"pong")
            return Reply(-Err.EBADPROTO)
        if msg.label == KICK_LABEL:  # request -> shared memory -> signal -> process -> response -> signal
            try:
                (length,) = SHM_HEADER.unpack_from(shm.read(0, SHM_HEADER_SIZE), 0)
            except DecodeError:
                env.log("shared-memory request with a malformed header: ignored")
                return None
            request = shm.read(SHM_HEADER_SIZE, min(length, RESPONSE_OFFSET - SHM_HEADER_SIZE))
            answer = request.upper()
            shm.write(RESPONSE_OFFSET, SHM_HEADER.pack(len(answer)) + answer)
            shm.write(0, bytes(SHM_HEADER_SIZE + len(request)))  # done with the request area
            env.log(f"shared-memory request of {len(request)} bytes answered (after {served} pings)")
            env.trigger(env.cap("done"))
        return None  # an IRQ (or a stray label) gets no reply

    serve(env, handle)
    return 0
