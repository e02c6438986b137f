"""The ping protocol of the hello demo (a user-level protocol: label 0x100, MR[0] = opcode)."""
import enum

from protocols.layout import U32, Layout, pad

PING_PROTO = 0x100
SERVER_LABEL = 0x10  # label the server binds its gate with
KICK_LABEL = 0x20  # label of the client -> server IRQ
DONE_LABEL = 0x30  # label of the server -> client IRQ
RESPONSE_OFFSET = 2048  # where the server writes its answer in the shared dataspace


class PingOp(enum.IntEnum):
    PING = 1  #: MR[1] = n; reply MR[0] = n + 1, data "pong"


#: The shared-memory request / answer header: u32 length | 4 bytes zero, then the bytes.
SHM_HEADER = Layout((U32, pad(4)), ("length",))
assert SHM_HEADER.size is not None  # fixed-size fields only
SHM_HEADER_SIZE: int = SHM_HEADER.size
