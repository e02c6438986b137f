"""est_service's service protocol: golden bytes both ways, round trips, and any bytes decode or give None."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.est_service import (
    MAX_DETAIL,
    Activity,
    CertState,
    Format,
    Op,
    Request,
    ServiceStatus,
    Status,
    decode_chain_der,
    decode_request,
    decode_response,
    decode_too_large,
    encode_response,
    too_large,
)

GOLDEN_REQUESTS = [
    (Request(Op.GET_CERT, Format.DER), bytes.fromhex("01 00")),
    (Request(Op.GET_CHAIN, Format.PEM), bytes.fromhex("02 01")),
    (Request(Op.STATUS), bytes.fromhex("03")),
]

STATUS = ServiceStatus(CertState.VALID, Activity.DEFERRED, 3, 401, 2, 5, 6, 1_700_000_000, -1, "KIND (HTTP 401): é")
GOLDEN_STATUS = bytes.fromhex(
    "01" "02" "0300" "9101" "0200"     # cert_state VALID, activity DEFERRED, error_code 3, http 401, failures 2
    "05000000" "06000000"              # successes, errors
    "00f1536500000000"                 # not_after 1700000000
    "ffffffffffffffff"                 # next_attempt -1
    "1300") + "KIND (HTTP 401): é".encode()  # detail_len 19, detail


@pytest.mark.parametrize("request_,golden", GOLDEN_REQUESTS)
def test_request_golden_bytes(request_, golden):
    assert request_.encode() == golden
    assert decode_request(golden) == request_


def test_status_golden_bytes():
    assert STATUS.encode() == GOLDEN_STATUS and len(GOLDEN_STATUS) == 34 + 19
    assert ServiceStatus.decode(GOLDEN_STATUS) == STATUS
    assert ServiceStatus.decode(bytes(34)) == ServiceStatus()


def test_response_chain_and_too_large_golden_bytes():
    assert encode_response(Status.OK, b"der") == b"\x00der" and decode_response(b"\x00der") == (Status.OK, b"der")
    assert encode_response(Status.NO_CERTIFICATE) == b"\x02"
    assert decode_response(b"\x02") == (Status.NO_CERTIFICATE, b"")
    assert too_large(300) == bytes.fromhex("03 2c010000") and decode_too_large(bytes.fromhex("2c010000")) == 300
    chain = bytes.fromhex("02000000 6162 01000000 63")
    assert decode_chain_der(chain) == [b"ab", b"c"]


@pytest.mark.parametrize("raw", [b"", b"\x04", b"\x01", b"\x01\x02", b"\x01\x00\x00", b"\x03\x00"])
def test_malformed_requests(raw):
    assert decode_request(raw) is None


@pytest.mark.parametrize("raw", [GOLDEN_STATUS[:-1], GOLDEN_STATUS + b"!", GOLDEN_STATUS[:33],
                                 b"\x03" + GOLDEN_STATUS[1:], GOLDEN_STATUS[:1] + b"\x07" + GOLDEN_STATUS[2:]])
def test_malformed_status(raw):
    assert ServiceStatus.decode(raw) is None


def test_status_text_is_cut_at_a_character_and_bad_utf8_is_replaced():
    long = ServiceStatus(detail="é" * 600).encode()
    assert len(long) == 34 + MAX_DETAIL and ServiceStatus.decode(long).detail == "é" * 256
    assert ServiceStatus.decode(bytes(32) + b"\x01\x00\xff").detail == "\ufffd"


@pytest.mark.parametrize("raw", [bytes.fromhex("00000000"), bytes.fromhex("05000000 6162"), b"\x01\x00"])
def test_malformed_chain(raw):
    assert decode_chain_der(raw) is None


_STATUSES = st.builds(ServiceStatus, st.sampled_from(CertState), st.sampled_from(Activity), st.integers(0, 0xFFFF),
                      st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
                      st.integers(0, 2**32 - 1), st.integers(-2**63, 2**63 - 1), st.integers(-2**63, 2**63 - 1),
                      st.text(max_size=100).filter(lambda t: len(t.encode()) <= MAX_DETAIL))


@given(_STATUSES)
def test_status_round_trip(status):
    assert ServiceStatus.decode(status.encode()) == status


@given(st.sampled_from(Op), st.sampled_from(Format))
def test_request_round_trip(op, fmt):
    request_ = Request(op) if op is Op.STATUS else Request(op, fmt)
    assert decode_request(request_.encode()) == request_


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=4))
def test_chain_round_trip(ders):
    framed = b"".join(len(d).to_bytes(4, "little") + d for d in ders)
    assert decode_chain_der(framed) == ders


@given(st.binary(max_size=80))
def test_any_bytes_decode_to_a_value_or_none(raw):
    request_ = decode_request(raw)
    assert request_ is None or request_.encode() == raw
    status = ServiceStatus.decode(raw)
    assert status is None or ServiceStatus.decode(status.encode()) == status
    decode_chain_der(raw)
    decode_too_large(raw)
    decode_response(raw)
