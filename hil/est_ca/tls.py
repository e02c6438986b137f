"""The EST server's TLS layer (pyOpenSSL): asks for a client certificate, never aborts on one.

Python's `ssl` can only ask for a client certificate with OpenSSL verifying it, and a failed
verification aborts the handshake -- so a device presenting a manufacturer certificate, its own
expired certificate or anything else foreign could not even fetch /cacerts. This layer asks
for a certificate (``VERIFY_PEER`` with the root as CA hint) and accepts whatever the client
proves it holds the key of (the TLS CertificateVerify still is checked by OpenSSL); the
application decides what the certificate is worth (`EstCa.device_identity`).

`TlsConnection` is just enough of a socket for `http.server`: ``recv_into``, ``sendall``,
``shutdown``, ``close``; plus what EST needs from the session: the peer certificate, the
protocol version and the ``tls-unique`` channel binding (RFC 5929; TLS 1.2 only -- it is
undefined for TLS 1.3, RFC 9266). Session resumption is off, so tls-unique is always the
client's Finished message of a full handshake.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

if TYPE_CHECKING:  # pyOpenSSL is imported by make_context (the `est-ca` extra)
    from OpenSSL import SSL

__all__ = ["TlsConnection", "make_context"]


def _accept_any(conn, cert, errnum, depth, ok) -> bool:
    return True  # the application judges the certificate; the handshake never fails on it


def make_context(cert_path: Path, key_path: Path, root: x509.Certificate) -> SSL.Context:
    """Raises ImportError without pyOpenSSL."""
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate_chain_file(str(cert_path))
    context.use_privatekey_file(str(key_path))
    context.check_privatekey()
    context.set_verify(SSL.VERIFY_PEER, _accept_any)
    context.add_client_ca(root)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_options(SSL.OP_NO_TICKET)
    return context


class TlsConnection:
    """A server-side TLS connection over a blocking socket with kernel send/receive timeouts."""

    def __init__(self, context: SSL.Context, sock: socket.socket, timeout: float) -> None:
        from OpenSSL import SSL

        self._ssl = SSL
        self.seq = 0  # the server's number for this connection (see `RunningServer.release_hung`)
        sock.settimeout(None)  # blocking; the kernel enforces the timeouts below
        seconds = int(timeout)
        micros = int((timeout - seconds) * 1_000_000)
        tv = struct.pack("ll", seconds, micros)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self._sock = sock
        self._conn = SSL.Connection(context, sock)
        self._conn.set_accept_state()

    def handshake(self) -> None:
        """Raises OSError: TimeoutError, or ConnectionError for a failed handshake."""
        SSL = self._ssl
        try:
            self._conn.do_handshake()
        except SSL.WantReadError as exc:
            raise TimeoutError("TLS handshake timed out") from exc
        except SSL.Error as exc:
            raise ConnectionError(f"TLS handshake failed: {exc}") from exc

    @property
    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    def peer_certificate(self) -> x509.Certificate | None:
        return self._conn.get_peer_certificate(as_cryptography=True)

    def tls_unique(self) -> bytes | None:
        """The RFC 5929 tls-unique value (TLS 1.2), None on TLS 1.3 where it is undefined."""
        if self.version != "TLSv1.2":
            return None
        return self._conn.get_peer_finished()  # full handshake: the client's Finished

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        SSL = self._ssl
        try:
            return self._conn.recv_into(buffer, nbytes or None)
        except SSL.ZeroReturnError:
            return 0
        except SSL.WantReadError as exc:
            raise TimeoutError("read timed out") from exc
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] == -1:  # unexpected EOF
                return 0
            raise ConnectionResetError(str(exc)) from exc
        except SSL.Error as exc:
            raise ConnectionError(f"TLS error: {exc}") from exc

    def sendall(self, data: bytes) -> None:
        SSL = self._ssl
        try:
            self._conn.sendall(data)
        except SSL.WantWriteError as exc:
            raise TimeoutError("write timed out") from exc
        except SSL.Error as exc:
            raise ConnectionError(f"TLS error: {exc}") from exc

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        try:
            self._conn.shutdown()
        except (self._ssl.Error, OSError):
            pass
        self._sock.close()
