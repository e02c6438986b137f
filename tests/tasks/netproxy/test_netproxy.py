"""The network proxy: streams only to the endpoints the image allows; malformed requests get a status."""
from __future__ import annotations

import socket
import threading

import pytest

from protocols.netproxy import Op, Request, Status, decode_request, decode_response, encode_response

IMAGE = """
name: net
run: {{until: [client]}}
objects:
  net: {{type: gate}}
  net_shm: {{type: dataspace, size: 128KiB}}
tasks:
  proxy:
    program: netproxy.task
    network: {{connect: ["127.0.0.1:{port}"]}}
    config: {{clients: {{client: {{gate: net, shm: net_shm}}}}}}
    caps: {{net: "net:svr", net_shm: "net_shm:rw"}}
  client:
    program: testing.net_client
    args: ["{target}", "hello proxy"]
    caps: {{net: "net:rw", net_shm: "net_shm:rw"}}
"""


@pytest.fixture
def echo_server():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.sendall(conn.recv(4096).upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    listener.close()


def test_allowed_endpoint_round_trip(boot, echo_server):
    target = f"127.0.0.1:{echo_server}"
    system = boot(IMAGE.format(port=echo_server, target=target))
    assert system.run(timeout=60) == 0
    assert system.results("client") == [{"connect": "OK", "send": "OK", "recv": "OK", "data": "HELLO PROXY"}]


def test_endpoint_not_in_the_image_is_denied(boot, echo_server):
    system = boot(IMAGE.format(port=echo_server, target=f"127.0.0.1:{echo_server + 1}"))
    assert system.run(timeout=60) == 0
    assert system.results("client") == [{"connect": "DENIED"}]
    assert any("DENIED (not in the image)" in line for line in system.lines("proxy"))


@pytest.mark.parametrize("raw", [b"", b"\x09", b"\x03abc", b"\x04x", b"\x01\xff\xfe"])
def test_malformed_requests_decode_to_none(raw):
    assert decode_request(raw) is None


def test_request_round_trip():
    for req in (Request(Op.CONNECT, endpoint="h:1"), Request(Op.SEND, data=b"x"), Request(Op.RECV, max_bytes=5,
                                                                                             timeout_ms=7)):
        assert decode_request(req.encode()) == req
    assert decode_response(encode_response(Status.CLOSED)) == (Status.CLOSED, b"")
