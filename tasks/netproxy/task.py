"""The network proxy: the only task with network authority, and only to the image's endpoints.

Like a network driver task in L4Re it holds the device (here: the host's
network, by running outside a network namespace); every other task reaches the
network only through a gate to this proxy, if its image gives it one. Endpoints
come from the image (``network.connect``); anything else is DENIED.
"""
from __future__ import annotations

import socket

from protocols.netproxy import Op, Request, Status, decode_request, encode_response
from tasks.runtime.serve import serve
from tasks.runtime.shm import ShmPeer, bind_peers, shm_calls


class Proxy:
    def __init__(self, env, allowed: list[str]):
        self.env = env
        self.allowed = set(allowed)
        self.streams: dict[int, socket.socket] = {}

    def handle(self, peer: ShmPeer, raw: bytes) -> bytes:
        req = decode_request(raw)
        if req is None:
            return encode_response(Status.BAD_REQUEST)
        try:
            return self._handle(peer, req)
        except OSError as exc:
            self._close(peer)
            self.env.log(f"{peer.name}: I/O error: {exc}")
            return encode_response(Status.IO_ERROR)

    def _handle(self, peer: ShmPeer, req: Request) -> bytes:
        if req.op is Op.CONNECT:
            self._close(peer)
            if req.endpoint not in self.allowed:
                self.env.log(f"{peer.name}: connect to {req.endpoint} DENIED (not in the image)")
                return encode_response(Status.DENIED)
            host, _, port = req.endpoint.rpartition(":")
            try:
                conn = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
            except OSError as exc:
                self.env.log(f"{peer.name}: connect to {req.endpoint} failed: {exc}")
                return encode_response(Status.CONNECT_FAILED)
            self.streams[peer.label] = conn
            return encode_response(Status.OK)
        sock = self.streams.get(peer.label)
        if req.op is Op.CLOSE:
            self._close(peer)
            return encode_response(Status.OK)
        if sock is None:
            return encode_response(Status.NOT_CONNECTED)
        if req.op is Op.SEND:
            sock.settimeout(10)
            sock.sendall(req.data)
            return encode_response(Status.OK)
        sock.settimeout(max(req.timeout_ms, 1) / 1000)
        try:
            data = sock.recv(req.max_bytes or 1)
        except TimeoutError:
            return encode_response(Status.TIMEOUT)
        if not data:
            self._close(peer)
            return encode_response(Status.CLOSED)
        return encode_response(Status.OK, data)

    def _close(self, peer: ShmPeer) -> None:
        sock = self.streams.pop(peer.label, None)
        if sock is not None:
            sock.close()


def main(env) -> int:
    proxy = Proxy(env, list(env.record.network))
    peers = bind_peers(env, env.config.get("clients", {}))
    env.log(f"serving {', '.join(p.name for p in peers.values()) or 'nobody'}; "
            f"endpoints: {', '.join(sorted(proxy.allowed)) or 'none'}")
    serve(env, shm_calls(peers, proxy.handle))
    return 0
