"""tasks/runtime/direct.py without a kernel: both ends of a socket pair in this process. Whatever a peer
writes, the runtime answers with a value and drops that end; it never raises (hypothesis)."""
from __future__ import annotations

import array
import os
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from kernel_model.abi import MR_BYTES, IpcError
from tasks.runtime.direct import HEAD, KERNEL, MAX_FRAME, Direct, decode

_H = struct.Struct("<qHH")
SEL = 0x5000


def _client() -> tuple[Direct, socket.socket, socket.socket]:
    kernel_a, kernel_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    d = Direct(kernel_a.fileno())
    d.add_client(SEL, 1, os.dup(a.fileno()))
    a.close()
    d._keep = (kernel_a, kernel_b)  # type: ignore[attr-defined]
    return d, b, kernel_b


def _server(n: int = 1) -> tuple[Direct, list[socket.socket], socket.socket, socket.socket]:
    kernel_a, kernel_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    d = Direct(kernel_a.fileno())
    peers = []
    for i in range(n):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        d.add_server(0x10 + 4 * i, i, os.dup(b.fileno()))
        b.close()
        peers.append(a)
    return d, peers, kernel_a, kernel_b


def test_a_call_is_one_write_and_one_read():
    d, peer, _k = _client()
    peer.send(_H.pack(7, 1, 0) + struct.pack("<Q", 42))  # the reply, already there
    msg = d.call(d.clients[SEL], SEL, 0x100, b"x" * 8, None)
    assert msg[0] is IpcError.OK and msg[1].label == 7 and msg[3] == struct.pack("<Q", 42)
    assert peer.recv(4096) == _H.pack(0x100, 1, 0) + b"x" * 8


def test_a_receive_timeout_drops_the_end_so_a_late_reply_never_answers_the_next_call():
    d, peer, _k = _client()
    msg = d.call(d.clients[SEL], SEL, 0x100, b"", 1000)
    assert msg[0] is IpcError.RETIMEOUT and SEL not in d.clients
    assert peer.recv(4096)  # the request went out; the end is closed now
    assert peer.recv(4096) == b""


def test_a_send_on_a_cut_channel_falls_back_to_the_kernel():
    d, peer, _k = _client()
    peer.shutdown(socket.SHUT_RDWR)  # what the host does on a cut (on its dup of the server end)
    assert d.call(d.clients[SEL], SEL, 0x100, b"", None) is None and SEL not in d.clients


def test_eof_while_waiting_ends_the_call_as_a_partner_that_died():
    d, peer, _k = _client()
    end = d.clients[SEL]
    peer.close()
    msg = d.call(end, SEL, 0x100, b"", None)
    assert msg is None or msg[0] is IpcError.ENOT_EXISTENT  # EPIPE on send, or EOF on the read
    assert SEL not in d.clients


@given(st.binary(max_size=MAX_FRAME + 16))
def test_any_reply_is_a_value(frame):
    d, peer, _k = _client()
    if frame:
        peer.send(frame)
    else:
        peer.shutdown(socket.SHUT_WR)
    msg = d.call(d.clients[SEL], SEL, 0x100, b"", None)
    good = decode(frame, True)
    if good is None:
        assert msg[0] is IpcError.ENOT_EXISTENT and SEL not in d.clients
    else:
        assert msg[1].label == good[0] and msg[3] == good[3] and SEL in d.clients


@given(st.binary(max_size=MAX_FRAME + 16), st.booleans())
def test_decoding_is_total(frame, reply):
    out = decode(frame, reply)
    assert out is None or (len(frame) >= HEAD and len(out[3]) <= MR_BYTES)


@given(st.binary(min_size=1, max_size=MAX_FRAME + 16))
def test_any_request_is_a_message_or_drops_only_that_end(frame):
    d, (bad, good), _ka, _kb = _server(2)
    bad.send(frame)
    good.send(_H.pack(0x100, 0, 0))
    seen = []
    for _ in range(3):
        got = d.next_request(0)
        if got is None:
            break
        seen.append(got)
    labels = [m[2] for m in seen]
    assert 0x14 in labels  # the honest end is served whatever the other wrote
    if decode(frame, False) is None:
        assert 0x10 not in labels and len(d.servers) == 1
    else:
        assert 0x10 in labels


def test_an_fd_sent_along_never_reaches_the_server():
    d, (peer,), _ka, _kb = _server(1)
    before = len(os.listdir("/proc/self/fd"))
    r, w = os.pipe()
    peer.sendmsg([_H.pack(0x100, 0, 0)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
    os.close(r)
    os.close(w)
    msg = d.next_request(0)
    assert msg[0] is IpcError.OK and msg[2] == 0x10
    assert len(os.listdir("/proc/self/fd")) == before


def test_ready_ends_are_served_round_robin():
    d, peers, _ka, _kb = _server(3)
    for peer in peers:
        for _ in range(3):
            peer.send(_H.pack(0x100, 0, 0))
    order = [d.next_request(0)[2] for _ in range(9)]
    assert order[:3] == order[3:6] == order[6:] and sorted(order[:3]) == [0x10, 0x14, 0x18]


def test_the_kernel_channel_wakes_the_server():
    d, _peers, _ka, kb = _server(1)
    kb.send(b"\x07" + bytes(7))
    assert d.next_request(0) is KERNEL
