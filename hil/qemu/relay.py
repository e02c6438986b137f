"""The device's one network path: a TCP relay to the EST CA on the host, and nothing else.

The guest has a virtio-net NIC on QEMU's user-mode network with ``restrict=on``: it can reach
neither the host nor the outside, except through explicit forwarding rules (QEMU manual,
"Network options", ``-netdev user``: *restrict* and *guestfwd*). One rule exists:
``guestfwd=tcp:10.0.2.100:PORT-cmd:...`` makes QEMU run ``relay.py stdio HOST:PORT`` for each
connection the guest opens to 10.0.2.100:PORT, with the connection on its stdin/stdout; that
command connects to the CA on the host's loopback and copies bytes both ways.

Inside the guest, the image's tasks talk to ``127.0.0.1:PORT`` exactly as on the host (the
network proxy's allowlist and the EST endpoint in ``images/wvds.yaml`` are unchanged), so
``relay.py listen 127.0.0.1:PORT 10.0.2.100:PORT`` runs in the guest and forwards each
connection to the guestfwd address.

Usage: ``python3 relay.py stdio HOST:PORT`` | ``python3 relay.py listen HOST:PORT TO_HOST:TO_PORT``.
Standard library only: the host side runs with ``python3 -I`` from QEMU.
"""
from __future__ import annotations

import os
import selectors
import socket
import sys
import threading

GUESTFWD_ADDRESS = "10.0.2.100"  # inside QEMU's default user-mode network 10.0.2.0/24
GUEST_ADDRESS = "10.0.2.15"
GUEST_GATEWAY = "10.0.2.2"
READY = "relay-ready"


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def pump(a_read: int, a_write: int, sock: socket.socket) -> None:
    """Copy ``a_read`` -> ``sock`` and ``sock`` -> ``a_write`` until both directions have ended."""
    sel = selectors.DefaultSelector()
    sel.register(a_read, selectors.EVENT_READ, "a")
    sel.register(sock, selectors.EVENT_READ, "s")
    open_sides = 2
    while open_sides:
        for key, _ in sel.select():
            if key.data == "a":
                data = os.read(a_read, 65536)
                if data:
                    sock.sendall(data)
                else:
                    sel.unregister(a_read)
                    open_sides -= 1
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
            else:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(a_write, view):]
                else:
                    sel.unregister(sock)
                    open_sides -= 1
                    if a_write != a_read:
                        os.close(a_write)
                    else:
                        try:
                            socket.socket(fileno=os.dup(a_write)).shutdown(socket.SHUT_WR)
                        except OSError:
                            pass


def stdio(address: str) -> int:
    """QEMU's guestfwd command: this process's stdin/stdout are one guest connection."""
    sock = socket.create_connection(parse_address(address), timeout=30)
    sock.settimeout(None)
    pump(0, 1, sock)
    return 0


def _serve_one(conn: socket.socket, to: tuple[str, int]) -> None:
    with conn:
        try:
            upstream = socket.create_connection(to, timeout=30)
        except OSError:
            return
        upstream.settimeout(None)
        with upstream:
            try:
                pump(conn.fileno(), conn.fileno(), upstream)
            except OSError:
                pass


def listen(address: str, to: str) -> int:
    """In the guest: accept on ``address``, forward each connection to ``to``."""
    listener = socket.create_server(parse_address(address), reuse_port=False)
    target = parse_address(to)
    print(READY, flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(conn, target), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "stdio":
        return stdio(argv[1])
    if len(argv) == 3 and argv[0] == "listen":
        return listen(argv[1], argv[2])
    print(__doc__.strip().splitlines()[-2], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
