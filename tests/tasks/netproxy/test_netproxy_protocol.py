"""The network proxy's wire format: golden bytes both ways, round trips, and any bytes decode or give None."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.netproxy import MAX_IO, Op, Request, Status, decode_request, decode_response, encode_response

GOLDEN_REQUESTS = [
    (Request(Op.CONNECT, endpoint="127.0.0.1:8443"), b"\x01" + b"127.0.0.1:8443"),
    (Request(Op.CONNECT, endpoint="[::1]:1"), b"\x01[::1]:1"),
    (Request(Op.SEND, data=b"\x00\xff"), bytes.fromhex("02" "00ff")),
    (Request(Op.RECV, max_bytes=4096, timeout_ms=250), bytes.fromhex("03" "00100000" "fa000000")),
    (Request(Op.CLOSE), bytes.fromhex("04")),
]

GOLDEN_RESPONSES = [
    ((Status.OK, b"hi"), bytes.fromhex("00" "6869")),
    ((Status.CLOSED, b""), bytes.fromhex("05")),
    ((Status.DENIED, b""), bytes.fromhex("01")),
    ((Status.IO_ERROR, b""), bytes.fromhex("07")),
]


@pytest.mark.parametrize("request_,golden", GOLDEN_REQUESTS)
def test_request_golden_bytes(request_, golden):
    assert request_.encode() == golden
    assert decode_request(golden) == request_


@pytest.mark.parametrize("response,golden", GOLDEN_RESPONSES)
def test_response_golden_bytes(response, golden):
    assert encode_response(*response) == golden
    assert decode_response(golden) == response


@pytest.mark.parametrize("raw", [
    b"\x02" + bytes(MAX_IO + 1),         # SEND beyond the proxy's buffer
    b"\x03" + bytes(7), b"\x03" + bytes(9),  # RECV is exactly two u32
    b"\x01\xc3",                          # CONNECT: not UTF-8
    b"\x00", b"\x05",                     # unknown ops
])
def test_malformed_requests(raw):
    assert decode_request(raw) is None


def test_recv_asks_for_at_most_max_io():
    assert decode_request(bytes.fromhex("03" "ffffffff" "01000000")) == Request(Op.RECV, max_bytes=MAX_IO, timeout_ms=1)
    assert decode_response(b"\x99") == (Status.BAD_REQUEST, b"") and decode_response(b"") == (Status.BAD_REQUEST, b"")


_REQUESTS = st.one_of(
    st.builds(Request, st.just(Op.CONNECT), endpoint=st.text(max_size=40)),
    st.builds(Request, st.just(Op.SEND), data=st.binary(max_size=200)),
    st.builds(Request, st.just(Op.RECV), max_bytes=st.integers(0, MAX_IO), timeout_ms=st.integers(0, 2**32 - 1)),
    st.just(Request(Op.CLOSE)),
)


@given(_REQUESTS)
def test_request_round_trip(request_):
    assert decode_request(request_.encode()) == request_


@given(st.sampled_from(Status), st.binary(max_size=64))
def test_response_round_trip(status, payload):
    assert decode_response(encode_response(status, payload)) == (status, payload)


@given(st.binary(max_size=64))
def test_any_bytes_decode_to_a_request_or_none(raw):
    request_ = decode_request(raw)
    assert request_ is None or decode_request(request_.encode()) == request_
    decode_response(raw)
