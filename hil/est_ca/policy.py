"""What a device certificate may say: the CA's naming policy, pure (no I/O, no keys).

The CA issues two kinds of end-entity certificate and keeps them apart:

* its **own TLS server certificate** (`EstCa.server_credentials`): EKU serverAuth only, and the
  server's names (``127.0.0.1``, ``::1``, ``localhost`` plus the host it listens on);
* **device certificates**: EKU clientAuth only, ``digitalSignature`` only, and a subject and
  subjectAltName fixed by this policy:

  - first enrollment (/simpleenroll, HTTP Basic): taken from the CSR, *if* the CSR stays inside
    the policy (`DevicePolicy.first_enrollment`); no other requested extension is copied;
  - re-enrollment (/simplereenroll): exactly the subject and subjectAltName of the certificate
    being renewed (RFC 7030 §3.3.2, §4.2.2) -- the CSR must repeat them and cannot change them.

Nothing a device asks for can name the server: a CSR whose subject CN or any SAN is one of the
server's names (or any loopback/unspecified address, ``localhost``, a wildcard) is refused.
Together with clientAuth-only EKU, an enrolled device cannot impersonate the EST server: TLS
clients (OpenSSL's default purpose check, as used by est_service and curl) refuse a server
certificate without serverAuth.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

__all__ = ["DevicePolicy", "Refused", "ServerNames", "san_of"]

SERVER_COMMON_NAME = "l4emu EST server"
DEFAULT_SERVER_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class Refused:
    """A CSR the CA will not sign; ``reason`` is sent to the client as text/plain."""

    reason: str


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass(frozen=True, slots=True)
class ServerNames:
    """The names only the CA's own server certificate may carry."""

    common_name: str = SERVER_COMMON_NAME
    hosts: tuple[str, ...] = DEFAULT_SERVER_HOSTS

    def with_hosts(self, extra: Iterable[str]) -> ServerNames:
        hosts = list(self.hosts)
        for host in extra:
            if host not in hosts:
                hosts.append(host)
        return ServerNames(self.common_name, tuple(hosts))

    def general_names(self) -> list[x509.GeneralName]:
        return [_general_name(h) for h in self.hosts]

    def _reserved_text(self) -> set[str]:
        return {h.lower() for h in self.hosts} | {self.common_name.lower(), "localhost"}

    def claims(self, name: x509.GeneralName) -> str | None:
        """Why ``name`` names (or could name) the server, or None."""
        if isinstance(name, x509.IPAddress):
            address = name.value
            if isinstance(address, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                return f"IP range {address} in a SAN"
            if address.is_loopback or address.is_unspecified:
                return f"{address} is a loopback/unspecified address"
            if str(address) in self.hosts:
                return f"{address} is the EST server's address"
        if isinstance(name, x509.DNSName):
            text = name.value.lower().rstrip(".")
            if "*" in text:
                return f"wildcard {name.value!r}"
            if text in self._reserved_text() or text.endswith(".localhost"):
                return f"{name.value!r} is the EST server's name"
        return None

    def claims_text(self, value: str) -> str | None:
        """Why a subject CN ``value`` names the server, or None."""
        if value.strip().lower().rstrip(".") in self._reserved_text():
            return f"CN={value!r} is the EST server's name"
        try:
            return self.claims(x509.IPAddress(ipaddress.ip_address(value.strip())))
        except ValueError:
            return self.claims(x509.DNSName(value.strip())) if "*" in value else None


_SUBJECT_ATTRIBUTES = frozenset({
    NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.COUNTRY_NAME, NameOID.LOCALITY_NAME, NameOID.STATE_OR_PROVINCE_NAME,
    NameOID.SERIAL_NUMBER,
})
_SAN_KINDS = (x509.DNSName, x509.IPAddress, x509.UniformResourceIdentifier, x509.RFC822Name)


def san_of(obj: x509.Certificate | x509.CertificateSigningRequest
           ) -> x509.SubjectAlternativeName | None:
    try:
        ext = obj.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return None
    return ext.value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    """Which subjects and SANs a first enrollment may ask for.

    ``dns_suffixes``: when not empty, every DNS SAN must end with one of them (e.g.
    ``(".devices.example",)``). ``max_sans`` bounds the SAN list.
    """

    dns_suffixes: tuple[str, ...] = ()
    max_sans: int = 8
    subject_attributes: frozenset[x509.ObjectIdentifier] = field(
        default_factory=lambda: _SUBJECT_ATTRIBUTES)

    def first_enrollment(
        self, csr: x509.CertificateSigningRequest, server: ServerNames
    ) -> tuple[x509.Name, x509.SubjectAlternativeName | None] | Refused:
        """The subject and SAN a device certificate for ``csr`` gets, or why not."""
        subject = csr.subject
        if len(subject) == 0:
            return Refused("CSR subject is empty")
        cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1:
            return Refused(f"the subject needs exactly one CN, got {len(cns)}")
        for rdn in subject.rdns:
            for attr in rdn:
                if attr.oid not in self.subject_attributes:
                    return Refused(f"subject attribute {attr.oid.dotted_string} "
                                   f"({attr.oid._name}) is not allowed for devices")
        why = server.claims_text(str(cns[0].value))
        if why:
            return Refused(f"device certificates cannot name the EST server: {why}")
        san = san_of(csr)
        if san is not None:
            names = list(san)
            if len(names) > self.max_sans:
                return Refused(f"at most {self.max_sans} subjectAltNames, got {len(names)}")
            for name in names:
                if not isinstance(name, _SAN_KINDS):
                    return Refused(f"subjectAltName type {type(name).__name__} is not allowed "
                                   "for devices")
                why = server.claims(name)
                if why:
                    return Refused(f"device certificates cannot name the EST server: {why}")
                if (self.dns_suffixes and isinstance(name, x509.DNSName)
                        and not name.value.lower().endswith(self.dns_suffixes)):
                    return Refused(f"DNS name {name.value!r} is outside "
                                   f"{', '.join(self.dns_suffixes)}")
        return subject, san
