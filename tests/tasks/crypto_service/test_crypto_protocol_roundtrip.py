"""The crypto wire on protocols.layout: every request and response round-trips; any bytes decode or give a status."""
from __future__ import annotations

import enum

from hypothesis import given
from hypothesis import strategies as st

from protocols import crypto as p


def _value(spec):
    if spec.kind in ("u8", "u16", "u32"):
        if isinstance(spec.conv, type) and issubclass(spec.conv, enum.IntFlag):
            return st.integers(0, 0xFF).map(spec.conv)
        if isinstance(spec.conv, type) and issubclass(spec.conv, enum.Enum):
            return st.sampled_from(spec.conv)
        if spec.conv is not None:  # the usage bits
            return st.integers(0, int(p.ALL_USAGE)).map(spec.conv)
        return st.integers(0, (1 << (8 * {"u8": 1, "u16": 2, "u32": 4}[spec.kind])) - 1)
    if spec.kind == "fixed":
        return st.binary(min_size=spec.size, max_size=spec.size)
    return st.binary(max_size=40)


def _messages(classes):
    return st.one_of(*(st.tuples(*(_value(f) for f in cls.LAYOUT)).map(lambda v, cls=cls: cls(*v)) for cls in classes))


@given(_messages(p.REQUEST_CLASSES.values()))
def test_every_request_round_trips(request_):
    assert p.parse_request(request_.encode()) == request_


@given(st.sampled_from(sorted(set(p.RESPONSE_CLASSES.values()) - {p.KeyResponse, p.KeyListResponse}, key=str)).flatmap(
    lambda cls: _messages([cls])))
def test_every_layout_response_round_trips(body):
    rtype = next(t for t, cls in p.RESPONSE_CLASSES.items() if cls is type(body))
    assert p.parse_response(p.encode_response(p.Status.SUCCESS, body), rtype) == (p.Status.SUCCESS, body)


@given(_messages([p.KeyInfo]), st.binary(max_size=40), st.lists(_messages([p.KeyInfo]), max_size=3),
       st.integers(0, 2**32 - 1))
def test_key_responses_round_trip(info, public, infos, cursor):
    key = p.KeyResponse(info, public)
    assert p.parse_response(p.encode_response(p.Status.SUCCESS, key), p.RequestType.KEY_GENERATE)[1] == key
    page = p.KeyListResponse(cursor, tuple(infos))
    assert p.parse_response(p.encode_response(p.Status.SUCCESS, page), p.RequestType.KEY_LIST)[1] == page


@given(st.binary(max_size=120), st.sampled_from(p.RequestType))
def test_any_bytes_give_a_request_a_status_or_a_response_error(raw, rtype):
    parsed = p.parse_request(raw)
    assert isinstance(parsed, p.Status) or p.parse_request(parsed.encode()) == parsed
    try:
        p.parse_response(raw, rtype)
    except p.ResponseError:
        pass
