"""Channel frames: golden bytes both ways for all five frames, round trips, and every malformation is a WireError."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel_model.abi import (
    INVALID_CAP,
    MR_WORDS,
    PAGE_SIZE,
    IpcError,
    IpcFlags,
    MsgTag,
    timeout_from_us,
    timeout_to_us,
    timeouts,
)
from kernel_model.bootrecord import BootRecord
from kernel_model.wire import (
    ITEM_RIGHTS,
    LOG_WRITE_MAX,
    Boot,
    Invocation,
    Item,
    ItemKind,
    RecvItem,
    Remap,
    Result,
    Revoke,
    WireError,
    decode_invocation,
    decode_kernel_frame,
    log_chunks,
)

GOLDEN_CALL = bytes.fromhex(
    "01" "03" "0100" "00000000"          # kind, flags CALL, 1 item, timeout never
    "0010000000000000"                    # dest = selector of slot 1
    "4100000100000000"                    # tag: label 0x100 << 16 | 1 item << 6 | 1 word
    "0000000000000000"                    # label
    "00f8ffffffffffff"                    # rcv_obj = L4_INVALID_CAP
    "0000000000000000" "0000000000000000"  # no memory window
    "0800"                                # 8 data bytes
    "01" "00" "0700" "00000000" "0020000000000000" "0100000000000000" "0030000000000000"  # obj item
    "2a00000000000000")


def test_invocation_golden_bytes():
    inv = Invocation(IpcFlags.CALL, 0x1000, MsgTag(0x100, 1, 1), (42).to_bytes(8, "little"),
                     (Item.obj(0x2000, 7, dest=0x3000),))
    assert inv.encode() == GOLDEN_CALL
    assert decode_invocation(GOLDEN_CALL) == inv


#: a send with a granted memory item, a receive window and a timeout
GOLDEN_SEND_MEM = bytes.fromhex(
    "01" "01" "0100" "00000004"          # kind, flags SEND, 1 item, timeouts(0, None) = 0x04000000
    "0020000000000000"                    # dest = selector of slot 2
    "4000000000000000"                    # tag: label 0, 1 item, 0 words
    "2a00000000000000"                    # label 0x2a
    "00f8ffffffffffff"                    # rcv_obj = L4_INVALID_CAP
    "0000002000000000" "0020000000000000"  # receive window 0x20000000 + 0x2000
    "0000"                                # no data
    "02" "01" "0300" "00000000" "0000001000000000" "0010000000000000" "0040000000000000")  # mem item, grant

#: (frame, golden bytes): the four frames the kernel sends
GOLDEN_KERNEL_FRAMES = [
    (Result(IpcError.OK, MsgTag(-22, 1, 1), 0x41, b"x" * 8, (RecvItem(ItemKind.MEMORY, 0x1000_0000, 6, 4096, 0x3000),)),
     bytes.fromhex("02" "00" "0100" "00000000" "4100eaffffffffff" "4100000000000000" "0800"
                   "02" "00" "0600" "00000000" "0000001000000000" "0010000000000000" "0030000000000000")
     + b"x" * 8),
    (Result(IpcError.RETIMEOUT), bytes.fromhex("02" "03" "0000" "00000000" + "00" * 16 + "0000")),
    (Boot(BootRecord(program="hello.ping", name="t", args=("a",))),
     bytes.fromhex("03" "00000000000000") + b'{"program":"hello.ping","name":"t","args":["a"]}'),
    (Revoke((0x1000, 0x2000)), bytes.fromhex("04" "00" "0200" "00000000" "0010000000000000" "0020000000000000")),
    (Remap(0x1000_0000, 0x2000, 0x1000, 3),
     bytes.fromhex("05" "00" "0300" "00000000" "0000001000000000" "0020000000000000" "0010000000000000")),
]


def test_send_with_a_memory_item_golden_bytes():
    inv = Invocation(IpcFlags.SEND, 0x2000, MsgTag(0, 0, 1), b"",
                     (Item.mem(0x1000_0000, 0x1000, 3, grant=True, dest=0x4000),), timeouts(0, None),
                     0x2A, INVALID_CAP, 0x2000_0000, 0x2000)
    assert inv.encode() == GOLDEN_SEND_MEM
    assert decode_invocation(GOLDEN_SEND_MEM) == inv


@pytest.mark.parametrize("value,golden", GOLDEN_KERNEL_FRAMES,
                         ids=lambda v: type(v).__name__ if not isinstance(v, bytes) else "")
def test_kernel_frame_golden_bytes(value, golden):
    assert value.encode() == golden
    assert decode_kernel_frame(golden) == value


@pytest.mark.parametrize("frame,reason", [
    (b"", "empty"), (b"\x09", "unknown kernel frame kind 9"), (b"\x01" + bytes(57), "unknown kernel frame kind 1"),
    (GOLDEN_KERNEL_FRAMES[0][1][:-1], "header says"), (GOLDEN_KERNEL_FRAMES[0][1] + b"!", "header says"),
    (GOLDEN_KERNEL_FRAMES[1][1][:1] + b"\xee" + GOLDEN_KERNEL_FRAMES[1][1][2:], "unknown IPC error"),
    (bytes.fromhex("03000000000000") , "malformed boot"), (bytes.fromhex("0300000000000000") + b"[1]",
     "not a JSON object"),
    (bytes.fromhex("0300000000000000") + b"\xff", "not JSON"), (bytes.fromhex("0300000000000000") + b"[" * 100_000,
     "not JSON"),
    (bytes.fromhex("0301000000000000") + b"{}", "padding"),
    (GOLDEN_KERNEL_FRAMES[3][1][:-1], "for 2 addresses"), (GOLDEN_KERNEL_FRAMES[4][1][:-1], "malformed remap"),
])
def test_malformed_kernel_frames(frame, reason):
    with pytest.raises(WireError, match=reason):
        decode_kernel_frame(frame)


_ADDR = st.integers(0, (1 << 64) - 1)


@st.composite
def invocations(draw) -> Invocation:
    items = []
    for _ in range(draw(st.integers(0, 4))):
        rights, grant, dest = draw(st.integers(0, ITEM_RIGHTS)) & ITEM_RIGHTS, draw(st.booleans()), draw(_ADDR)
        if draw(st.booleans()):
            items.append(Item.obj(draw(_ADDR), rights, grant=grant, dest=dest))
        else:
            index = draw(_ADDR)
            items.append(Item.mem(index, draw(st.integers(0, (1 << 64) - index)), rights, grant=grant, dest=dest))
    data = draw(st.binary(max_size=8 * (MR_WORDS - 2 * len(items))))
    tag = MsgTag(draw(st.integers(-(1 << 47), (1 << 47) - 1)), len(data) // 8, len(items),
                 draw(st.sampled_from([0, 0x1000, 0xF000])))
    base = draw(st.integers(0, (1 << 52) - 1)) * PAGE_SIZE
    size = draw(st.integers(0, ((1 << 64) - base) // PAGE_SIZE)) * PAGE_SIZE
    return Invocation(draw(st.integers(0, 15)), draw(_ADDR), tag, data, tuple(items),
                      draw(st.integers(0, (1 << 32) - 1)), draw(_ADDR), draw(_ADDR), base, size)


@given(invocations())
def test_invocation_round_trip(inv):
    assert decode_invocation(inv.encode()) == inv


_RECV_ITEMS = st.builds(RecvItem, st.sampled_from(ItemKind), _ADDR, st.integers(0, 0xFFFF), _ADDR, _ADDR)
_KERNEL_FRAME_VALUES = st.one_of(
    st.builds(Result, st.sampled_from(IpcError), st.builds(MsgTag, st.integers(-(1 << 47), (1 << 47) - 1),
                                                           st.integers(0, 63), st.integers(0, 0), st.just(0)),
              _ADDR, st.binary(max_size=64), st.lists(_RECV_ITEMS, max_size=4).map(tuple)),
    st.builds(Boot, st.builds(BootRecord, program=st.from_regex(r"[a-z_][a-z0-9_]{0,8}(\.[a-z_][a-z0-9_]{0,8})?",
                                                                fullmatch=True),
                              name=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True),
                              args=st.lists(st.text(max_size=8), max_size=3).map(tuple),
                              caps=st.dictionaries(st.text(max_size=8), st.integers(0, 1 << 20), max_size=3))),
    st.builds(Revoke, st.lists(_ADDR, max_size=8).map(tuple)),
    st.builds(Remap, _ADDR, _ADDR, _ADDR, st.integers(0, 0xFFFF)),
)


@given(_KERNEL_FRAME_VALUES)
def test_kernel_frame_round_trip(frame):
    assert decode_kernel_frame(frame.encode()) == frame


@given(st.one_of(st.binary(max_size=200), st.sampled_from([g for _v, g in GOLDEN_KERNEL_FRAMES]).flatmap(
    lambda g: st.tuples(st.integers(0, len(g)), st.binary(max_size=3)).map(
        lambda c: g[:c[0]] + c[1] + g[c[0] + len(c[1]):]))))
def test_decoding_kernel_frames_only_ever_raises_wire_error(frame):
    try:
        decode_kernel_frame(frame)
    except WireError:
        pass


def test_log_chunks_fit_one_log_write():
    assert LOG_WRITE_MAX == 488
    assert log_chunks("hi") == [b"hi\n"]
    chunks = log_chunks("é" * 500)
    assert b"".join(chunks) == ("é" * 500 + "\n").encode() and [len(c) for c in chunks] == [488, 488, 25]


def test_msgtag_layout_and_signed_label():
    assert MsgTag(-13, 2, 1).raw() == ((-13 << 16) | (1 << 6) | 2) & (2**64 - 1)
    assert MsgTag.from_raw(MsgTag(-13, 2, 1).raw()) == MsgTag(-13, 2, 1)
    with pytest.raises(ValueError):
        MsgTag(0, 62, 1).raw()  # 62 + 2 > 63 registers


def test_timeouts_use_the_l4_encoding():
    assert timeout_from_us(None) == 0 and timeout_from_us(0) == 0x0400
    assert timeouts(0, None) == 0x0400_0000
    for us in (1, 1000, 1023, 1024, 123_456, 10_000_000):
        assert us <= timeout_to_us(timeout_from_us(us)) < us * 1.002 + 2  # rounded up, never early


@pytest.mark.parametrize("frame,reason", [
    (b"", "shorter"), (GOLDEN_CALL[:-1], "header says"), (b"\x02" + GOLDEN_CALL[1:], "expected an invocation"),
    (GOLDEN_CALL[:1] + b"\x10" + GOLDEN_CALL[2:], "unknown IPC flags"),
])
def test_malformed_frames(frame, reason):
    with pytest.raises(WireError, match=reason):
        decode_invocation(frame)


@given(st.one_of(st.binary(max_size=400), st.sampled_from([GOLDEN_CALL, GOLDEN_SEND_MEM]).flatmap(
    lambda g: st.tuples(st.integers(0, len(g)), st.binary(max_size=3)).map(
        lambda c: g[:c[0]] + c[1] + g[c[0] + len(c[1]):]))))
def test_decoding_random_bytes_only_ever_raises_wire_error(frame):
    try:
        decode_invocation(frame)
    except WireError:
        pass
