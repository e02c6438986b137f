"""Shares its dataspace with the first caller, revokes it on the second call, reports on the third."""
from capabilities.rights import MemRights
from kernel_model.wire import Item


def main(env) -> int:
    region = env.map_dataspace(env.cap("shm"), writable=True)
    region.write(0, b"secret-1")
    env.bind_gate(env.cap("svc"), 0x10)
    env.log("sharing")
    env.wait()
    env.reply_and_wait(0, items=[Item.mem(region.address, 4096, MemRights.R | MemRights.W)])
    status = env.unmap(region, only_others=True)  # revoke what we handed out; keep our own mapping
    region.write(0, b"secret-2")
    env.log(f"revoked ({status}); wrote secret-2")
    env.reply_and_wait(0)
    env.reply_and_wait(0, blob=region.read(0, 8))
    return 0
