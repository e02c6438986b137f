"""A development EST certificate authority (RFC 7030 server side) for loopback tests.

    ca = EstCa("var/est-ca")                    # creates or reloads the CA
    with serve(ca, port=0) as running:          # HTTPS on 127.0.0.1, a free port
        print(running.url, ca.ca_cert_path)

Modules: `store` (state directory), `authority` (two-tier CA, issuance, rotation, which
device certificates are current), `policy` (what a device certificate may say), `identity`
(who is asking), `tls` (client certificates without handshake aborts, tls-unique), `server`
(HTTP handler, faults), `serving` (start/stop), `cli` (`l4emu est-ca`), `binding` (which EST
server an image uses: `l4emu boot --est-ca/--est-server`).
"""

from .authority import CURVES, EstCa, EstCaError
from .policy import DevicePolicy, Refused, ServerNames
from .server import DEFAULT_CSRATTRS, Fault, RequestRecord, ServerOptions
from .serving import RunningServer, serve

__all__ = [
    "CURVES", "DEFAULT_CSRATTRS", "DevicePolicy", "EstCa", "EstCaError", "Fault", "Refused",
    "RequestRecord", "RunningServer", "ServerNames", "ServerOptions", "serve",
]
