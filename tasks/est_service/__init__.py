"""est_service: RFC 7030 EST enrollment for the WvdS gateway.

The protocol core in this package contains no networking code at all (h11-style): it builds
HTTP requests as data and interprets HTTP responses as data. The task process that wraps it
reaches the EST server only through a capability to the network proxy task.

Modules, one concept each:

* `messages`  – HttpRequest / HttpResponse / EstServer (URL + label) / BasicAuth
* `results`   – outcomes (CaCerts, Enrolled, CsrAttributes, Deferred, AuthRequired) and EstError
* `protocol`  – the four operations (cacerts, csrattrs, simpleenroll, simplereenroll)
* `exchange`  – the Exchange state machine they share (202 deferral, 401, transitions)
* `codec`     – base64 bodies, media types, certs-only PKCS#7
* `trust`     – explicit trust anchor checks
* `csr`       – EC P-256/P-384 keys and PKCS#10 requests (re-enroll keeps Subject + SAN)
* `protocols.csrattrs` (outside this package: the development CA uses it too) – the /csrattrs DER codec
* `service_protocol` – what other tasks ask est_service, as bytes (on `protocols.layout`)
* `renewal`   – pure renewal/backoff policy
* `http_transport` – blocking TLS shell for tests and development (the only module with I/O)
"""

from protocols.csrattrs import CsrAttribute, CsrAttrs

from .csr import Curve, build_csr, build_reenroll_csr, encode_pkcs10, generate_key
from .messages import BasicAuth, EstServer, HttpRequest, HttpResponse, Operation
from .protocol import (
    DeferralLimits,
    Exchange,
    ProtocolMisuse,
    State,
    cacerts,
    csrattrs,
    simpleenroll,
    simplereenroll,
)
from .renewal import Action, Decision, RenewalPolicy, RenewalState, decide, record_failure, record_success
from .results import (
    AuthRequired,
    CaCerts,
    CsrAttributes,
    Deferred,
    Enrolled,
    ErrorKind,
    EstError,
    Outcome,
)
from .trust import TrustAnchors

__all__ = [
    "Action", "AuthRequired", "BasicAuth", "CaCerts", "CsrAttribute", "CsrAttributes",
    "CsrAttrs", "Curve", "Decision", "DeferralLimits", "Deferred", "Enrolled", "ErrorKind",
    "EstError", "EstServer", "Exchange", "HttpRequest", "HttpResponse", "Operation", "Outcome",
    "ProtocolMisuse", "RenewalPolicy", "RenewalState", "State", "TrustAnchors", "build_csr",
    "build_reenroll_csr", "cacerts", "csrattrs", "decide", "encode_pkcs10", "generate_key",
    "record_failure", "record_success", "simpleenroll", "simplereenroll",
]
