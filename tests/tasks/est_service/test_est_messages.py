"""HTTP requests/responses as data, EST URLs with and without a CA label (RFC 7030 §3.2.2)."""

from __future__ import annotations

import pytest

from tasks.est_service.messages import BasicAuth, EstServer, HttpRequest, HttpResponse, Operation


@pytest.mark.parametrize(
    ("label", "operation", "path"),
    [
        (None, Operation.CACERTS, "/.well-known/est/cacerts"),
        (None, Operation.SIMPLEENROLL, "/.well-known/est/simpleenroll"),
        (None, Operation.SIMPLEREENROLL, "/.well-known/est/simplereenroll"),
        (None, Operation.CSRATTRS, "/.well-known/est/csrattrs"),
        ("arbitraryLabel1", Operation.SIMPLEENROLL,
         "/.well-known/est/arbitraryLabel1/simpleenroll"),
        ("gw-ca_2.v1", Operation.CACERTS, "/.well-known/est/gw-ca_2.v1/cacerts"),
    ],
)
def test_EstServer_path(label: str | None, operation: Operation, path: str) -> None:
    assert EstServer("est.example", 8443, label).path(operation) == path


@pytest.mark.parametrize("label", ["", "a/b", "with space", "../x", "a?b", "a#b", "é"])
def test_EstServer_rejects_labels_that_are_not_one_segment(label: str) -> None:
    with pytest.raises(ValueError, match="one URI path segment"):
        EstServer("est.example", label=label)


@pytest.mark.parametrize(
    ("host", "port", "authority"),
    [("est.example", 443, "est.example"), ("est.example", 8443, "est.example:8443"),
     ("127.0.0.1", 1234, "127.0.0.1:1234"), ("::1", 8443, "[::1]:8443")],
)
def test_EstServer_authority(host: str, port: int, authority: str) -> None:
    assert EstServer(host, port).authority == authority


@pytest.mark.parametrize(("host", "port"), [("", 443), ("a/b", 443), ("x", 0), ("x", 70000)])
def test_EstServer_rejects_bad_addresses(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        EstServer(host, port)


def test_BasicAuth_header_and_hidden_password() -> None:
    auth = BasicAuth("estuser", "estpwd")
    # RFC 7617 §2 example shape: base64("estuser:estpwd")
    assert auth.header_value() == "Basic ZXN0dXNlcjplc3Rwd2Q="
    assert "estpwd" not in repr(auth)
    with pytest.raises(ValueError, match="':'"):
        BasicAuth("a:b", "x")


def test_HttpRequest_to_wire_get_is_golden() -> None:
    request = HttpRequest("GET", "/.well-known/est/cacerts",
                          (("Host", "est.example:8443"), ("Accept", "application/pkcs7-mime")))
    assert request.to_wire() == (
        b"GET /.well-known/est/cacerts HTTP/1.1\r\n"
        b"Host: est.example:8443\r\n"
        b"Accept: application/pkcs7-mime\r\n"
        b"\r\n"
    )


def test_HttpRequest_to_wire_post_derives_content_length() -> None:
    request = HttpRequest("POST", "/x", (("Host", "h"),), b"abc\n")
    assert request.to_wire() == b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabc\n"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "PUT", "target": "/x", "headers": ()},
        {"method": "GET", "target": "x", "headers": ()},
        {"method": "GET", "target": "/a b", "headers": ()},
        {"method": "GET", "target": "/x", "headers": (("Bad Name", "v"),)},
        {"method": "GET", "target": "/x", "headers": (("X", "a\r\nInjected: 1"),)},
        {"method": "POST", "target": "/x", "headers": (("Content-Length", "3"),)},
    ],
)
def test_HttpRequest_validates_at_construction(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        HttpRequest(**kwargs)


def test_header_lookup_is_case_insensitive() -> None:
    response = HttpResponse(202, (("retry-after", "5"), ("Retry-After", "9")))
    assert response.header("Retry-After") == "5"
    assert response.header("x-missing") is None
    with pytest.raises(ValueError):
        HttpResponse(99)
