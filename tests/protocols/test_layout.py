"""The layout toolkit: one table gives encode, decode and checks; decoding any bytes gives a value or DecodeError."""
from __future__ import annotations

import enum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.layout import (
    I64,
    REST,
    U8,
    U16,
    U32,
    U64,
    VAR8,
    VAR16,
    VAR32,
    DecodeError,
    Field,
    Layout,
    Tagged,
    const,
    fixed,
    message,
    pad,
)


class Color(enum.IntEnum):
    RED = 1
    BLUE = 2


@message(U8, Field("u8", conv=Color), U16, U32, U64, I64, VAR8, VAR16, fixed(3), Field("rest", text="strict"), fixed(2))
class Everything:
    a: int
    color: Color
    b: int
    c: int
    d: int
    e: int
    short: bytes
    longer: bytes
    three: bytes
    text: str
    tail: bytes


EVERYTHING = Everything(0xAB, Color.BLUE, 0x1234, 0xDEADBEEF, 1 << 63, -2, b"x", b"yz", b"123", "é!", b"TT")
GOLDEN = bytes.fromhex(
    "ab" "02" "3412" "efbeadde" "0000000000000080" "feffffffffffffff"  # the integers, little-endian
    "01" "78" "0200" "797a" "313233"                                   # var8, var16, fixed(3)
    "c3a921" "5454")                                                   # rest (UTF-8 text), fixed(2)


def test_golden_bytes_both_ways():
    assert EVERYTHING.to_payload() == GOLDEN
    assert Everything.from_payload(GOLDEN) == EVERYTHING
    assert Everything._layout.struct is None and Everything._layout.size is None


@message(const("u8", 7), U16, pad(2), U32)
class Record:
    n: int
    m: int


def test_a_fixed_record_is_one_struct_with_constants_and_padding_checked():
    layout = Record._layout
    assert layout.size == layout.struct.size == 9
    assert Record(5, 6).to_payload() == bytes.fromhex("07" "0500" "0000" "06000000") == layout.pack(5, 6)
    assert Record.from_payload(bytes.fromhex("07050000000600000000")[:9]) == Record(5, 6)
    assert layout.unpack_from(b"??" + Record(1, 2).to_payload() + b"more", 2) == (1, 2)
    with pytest.raises(DecodeError, match="expected 0x7"):
        Record.from_payload(bytes.fromhex("08" "0500" "0000" "06000000"))
    with pytest.raises(DecodeError, match="padding"):
        Record.from_payload(bytes.fromhex("07" "0500" "0100" "06000000"))
    with pytest.raises(DecodeError, match="9"):
        layout.unpack_from(Record(1, 2).to_payload(), 1)


@pytest.mark.parametrize("args,error", [
    ((0x100, Color.RED, 0, 0, 0, 0, b"", b"", b"123", "", b"TT"), "a out of range"),
    ((0, 3, 0, 0, 0, 0, b"", b"", b"123", "", b"TT"), "3 is not a valid Color"),
    ((0, 1, 0, 0, 1 << 64, 0, b"", b"", b"123", "", b"TT"), "d out of range"),
    ((0, 1, 0, 0, 0, 1 << 63, b"", b"", b"123", "", b"TT"), "e out of range"),
    ((0, 1, 0, 0, 0, 0, b"x" * 256, b"", b"123", "", b"TT"), "short too long"),
    ((0, 1, 0, 0, 0, 0, b"", b"", b"12", "", b"TT"), "three must be 3 bytes"),
    ((0, 1, 0, 0, 0, 0, "not bytes", b"", b"123", "", b"TT"), "short must be bytes"),
    ((0, 1, 0, 0, 0, 0, b"", b"", b"123", 5, b"TT"), "text must be text"),
])
def test_construction_checks(args, error):
    with pytest.raises((ValueError, TypeError), match=error):
        Everything(*args)


@pytest.mark.parametrize("raw,error", [
    (GOLDEN[:28], "runs past"), (GOLDEN[:31], "too short"), (GOLDEN[:10], "too short"),
    (GOLDEN[:1] + b"\x09" + GOLDEN[2:], "not a valid Color"),
    (GOLDEN[:-4] + b"\xff" + GOLDEN[-3:], "utf-8"),
])
def test_decode_errors(raw, error):
    with pytest.raises(DecodeError, match=error):
        Everything.from_payload(raw)


def test_trailing_bytes_and_bad_buffers():
    layout = Layout((U8, VAR8), ("a", "b"))
    with pytest.raises(DecodeError, match="trailing"):
        layout.decode(b"\x01\x00!")
    with pytest.raises(DecodeError, match="not a byte buffer"):
        layout.decode("text")


def test_the_table_is_checked_when_it_is_declared():
    with pytest.raises(ValueError, match="at most one rest"):
        Layout((REST, REST))
    with pytest.raises(ValueError, match="only fixed-size"):
        Layout((REST, VAR8))
    with pytest.raises(ValueError, match="unknown field kind"):
        Field("u24")


def test_repeated_and_tagged():
    blobs = Layout((VAR32,), ("der",))
    assert blobs.decode_repeated(b"\x01\x00\x00\x00a" b"\x00\x00\x00\x00") == [[b"a"], [b""]]
    with pytest.raises(DecodeError):
        blobs.decode_repeated(b"\x05\x00\x00\x00ab")
    tagged = Tagged({1: Layout((Field("u8", conv=Color),), ("color",)), 2: Layout((), ())})

    class Obj:
        color = Color.RED

    assert tagged.encode(1, Obj()) == b"\x01\x01" and tagged.encode(2, Obj()) == b"\x02"
    assert tagged.decode(b"\x01\x02") == (1, {"color": Color.BLUE}) and tagged.decode(b"\x02") == (2, {})
    for raw, error in ((b"", "empty"), (b"\x03", "unknown tag 3"), (b"\x01\x07", "Color"), (b"\x02x", "trailing")):
        with pytest.raises(DecodeError, match=error):
            tagged.decode(raw)


_EVERYTHING = st.builds(
    Everything, st.integers(0, 0xFF), st.sampled_from(Color), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
    st.integers(0, (1 << 64) - 1), st.integers(-(1 << 63), (1 << 63) - 1), st.binary(max_size=255),
    st.binary(max_size=300), st.binary(min_size=3, max_size=3), st.text(max_size=20), st.binary(min_size=2, max_size=2))


@given(_EVERYTHING)
def test_round_trip(value):
    assert Everything.from_payload(value.to_payload()) == value


@given(st.binary(max_size=80))
def test_decoding_any_bytes_gives_a_value_or_decode_error(raw):
    for decode in (Everything.from_payload, Record.from_payload):
        try:
            decode(raw)
        except DecodeError:
            pass


# -- the generated codecs against the table-walking ones they were generated from ---------------
@message(U32, VAR16, fixed(12), const("u8", 9), pad(2), REST, fixed(16))
class Sealed:
    key: int
    aad: bytes
    nonce: bytes
    body: bytes
    tag: bytes


_LAYOUTS = (Everything._layout, Sealed._layout,  # type: ignore[attr-defined]
            Layout((VAR8, U16, VAR32), ("a", "b", "c")), Layout((REST,), ("r",)))


def _outcome(decode, raw):
    try:
        return tuple(decode(raw))
    except DecodeError:
        return "DecodeError"


@given(st.binary(max_size=120))
def test_the_generated_decoder_agrees_with_the_table_on_any_bytes(raw):
    for layout in _LAYOUTS:
        for data in (raw, bytearray(raw), memoryview(raw)):
            got = _outcome(layout.decode, data)
            assert got == _outcome(layout.decode_generic, data)
            if got != "DecodeError":
                assert all(type(v) in (int, bytes) for v in got)


@given(_EVERYTHING)
def test_the_generated_encoder_agrees_with_the_table(value):
    values = value._values()
    assert b"".join(value.payload_parts()) == value.to_payload() == Everything._layout.encode_generic(values)


@given(st.integers(0, 0xFFFFFFFF), st.binary(max_size=300), st.binary(min_size=12, max_size=12), st.binary(max_size=50),
       st.binary(min_size=16, max_size=16))
def test_a_trusted_decode_builds_the_same_message_as_the_checked_constructor(key, aad, nonce, body, tag):
    built = Sealed(key, aad, nonce, body, tag)
    decoded = Sealed.from_payload(built.to_payload())
    assert decoded == built and type(decoded.body) is bytes
    assert Sealed.from_payload(memoryview(bytearray(built.to_payload()))) == built


def test_the_generated_construction_check_converts_or_refuses_like_the_table():
    assert Sealed(True, bytearray(b"a"), memoryview(bytes(12)), b"", bytes(16)).key == 1  # normalised to int
    assert type(Sealed(1, bytearray(b"a"), bytes(12), b"", bytes(16)).aad) is bytes
    for args, error in (((-1, b"", bytes(12), b"", bytes(16)), "key out of range"),
                        ((1, b"x" * 65536, bytes(12), b"", bytes(16)), "aad too long"),
                        ((1, b"", bytes(11), b"", bytes(16)), "nonce must be 12 bytes"),
                        ((1, "text", bytes(12), b"", bytes(16)), "aad must be bytes"),
                        (("1", b"", bytes(12), b"", bytes(16)), None)):
        if error is None:
            assert Sealed(*args).key == 1  # int("1"): the table's int() accepts it, as before
            continue
        with pytest.raises((ValueError, TypeError), match=error):
            Sealed(*args)
    with pytest.raises(DecodeError, match="expected 0x9"):
        Sealed.from_payload(Sealed(1, b"", bytes(12), b"", bytes(16)).to_payload().replace(b"\x09", b"\x08"))
