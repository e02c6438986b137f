"""Channel frames: golden bytes both ways, and every malformation is a WireError."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from kernel_model.abi import IpcError, IpcFlags, MsgTag, timeout_from_us, timeout_to_us, timeouts
from kernel_model.wire import (Invocation, Item, ItemKind, RecvItem, Result, Revoke, WireError, decode_invocation,
                               decode_kernel_frame)

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


def test_result_round_trip():
    res = Result(IpcError.OK, MsgTag(-22), 0x41, b"x" * 8, (RecvItem(ItemKind.MEMORY, 0x1000_0000, 6, 4096, 0),))
    assert decode_kernel_frame(res.encode()) == res
    assert decode_kernel_frame(Revoke((0x1000, 0x2000)).encode()) == Revoke((0x1000, 0x2000))


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


@given(st.binary(max_size=400))
def test_decoding_random_bytes_only_ever_raises_wire_error(frame):
    try:
        decode_invocation(frame)
    except WireError:
        pass
