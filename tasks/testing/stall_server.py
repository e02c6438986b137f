"""A server that takes a call and never answers (to test callers of a server that dies mid-call)."""


def main(env) -> int:
    env.bind_gate(env.cap("svc"), 0x10)
    env.log("waiting for a call")
    msg = env.wait()
    env.log(f"got call proto={msg.proto:#x}; not answering")
    while True:
        env.wait()
