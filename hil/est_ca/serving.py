"""Start and stop the EST server in the background: `serve()` returns a `RunningServer`.

The listening socket is bound and listening before `serve()` returns, so a client may
connect immediately (connections queue until the serving thread accepts them); tests never
need to wait for the server. Port 0 picks a free port, reported as `RunningServer.port`.

Binding is restricted to loopback addresses unless ``allow_non_loopback=True``: this CA
has a well-known default password and an unencrypted key, it is not a production service.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import threading
from types import TracebackType
from typing import Any

from .authority import EstCa, EstCaError
from .server import RequestRecord, ServerOptions, make_server

__all__ = ["RunningServer", "serve"]


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EstCaError(f"cannot resolve {host!r}: {exc}") from exc
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


class RunningServer:
    """A serving EST CA. Use as a context manager or call `stop()`."""

    def __init__(self, ca: EstCa, host: str, port: int, options: ServerOptions,
                 allow_non_loopback: bool) -> None:
        family, address = _resolve(host, port)
        if not allow_non_loopback and not ipaddress.ip_address(address).is_loopback:
            raise EstCaError(f"refusing to bind {host} ({address}): not a loopback address; "
                             "pass allow_non_loopback=True / --allow-non-loopback to insist")
        self.ca = ca
        self.host = host
        try:
            self._httpd = make_server(ca, (address, port), family, options)
        except OSError as exc:
            raise EstCaError(f"cannot listen on {host}:{port}: {exc}") from exc
        self.port: int = self._httpd.server_address[1]
        # A short poll interval keeps stop() fast (shutdown waits for the next poll).
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name=f"est-ca:{self.port}", daemon=True)
        self._thread.start()
        self._stopped = False

    @property
    def url(self) -> str:
        """Base URL of the EST endpoints, e.g. ``https://127.0.0.1:8443/.well-known/est``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}/.well-known/est"

    @property
    def options(self) -> ServerOptions:
        return self._httpd.options

    @property
    def records(self) -> list[RequestRecord]:
        """Every request handled so far, oldest first (one per log line)."""
        return list(self._httpd.records)

    def update(self, **changes: Any) -> ServerOptions:
        """Change `ServerOptions` fields for requests that start from now on, e.g.
        ``update(fault=Fault.HANG)`` or ``update(defer=2, retry_after=5)``; returns the new
        options. (Deferral counts already kept per key are not reset.)"""
        self._httpd.options = dataclasses.replace(self._httpd.options, **changes)
        return self._httpd.options

    def release_hung(self, guard_s: float = 60.0) -> None:
        """End the `Fault.HANG` of every connection accepted so far (also of one that has not
        reached its hang yet) and wait until all of them have been recorded, so the next
        test's records start clean. ``guard_s`` only bounds a stuck handler; it is not a speed
        expectation."""
        httpd = self._httpd
        with httpd.changed:
            target = httpd.accepted
            httpd.released = max(httpd.released, target)
            httpd.changed.notify_all()
            httpd.changed.wait_for(lambda: not any(seq <= target for seq in httpd.inflight),
                                   timeout=guard_s)

    def stop(self) -> None:
        """Stop accepting, release hanging handlers, wait for all handler threads. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._httpd.stopping.set()
        with self._httpd.changed:
            self._httpd.changed.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def serve(
    ca: EstCa,
    host: str = "127.0.0.1",
    port: int = 0,
    options: ServerOptions = ServerOptions(),
    *,
    allow_non_loopback: bool = False,
) -> RunningServer:
    """Serve ``ca`` over HTTPS on ``host:port`` (0 = a free port) in a background thread.

    Raises:
        EstCaError: non-loopback address without ``allow_non_loopback``, or cannot listen.
    """
    return RunningServer(ca, host, port, options, allow_non_loopback)
