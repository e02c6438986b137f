"""The device naming policy, pure: what a first enrollment may ask for (hil/est_ca/policy.py)."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hil.est_ca import DevicePolicy, Refused, ServerNames

KEY = ec.generate_private_key(ec.SECP256R1())


def csr(attrs, sans=()) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(KEY, hashes.SHA256())


CN = (NameOID.COMMON_NAME, "gateway-0001")
SERVER = ServerNames().with_hosts(["est.lab", "10.0.0.1"])


def test_inside_the_policy_the_csr_names_are_used():
    request = csr([CN, (NameOID.ORGANIZATION_NAME, "WvdS")],
                  [x509.DNSName("gw.devices.example"), x509.IPAddress(ipaddress.ip_address("10.0.0.7"))])
    subject, san = DevicePolicy().first_enrollment(request, SERVER)
    assert subject == request.subject and list(san) == list(
        request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


@pytest.mark.parametrize(("attrs", "sans", "why"), [
    ([], (), "subject is empty"),
    ([(NameOID.ORGANIZATION_NAME, "WvdS")], (), "exactly one CN"),
    ([CN, (NameOID.COMMON_NAME, "other")], (), "exactly one CN"),
    ([CN, (NameOID.EMAIL_ADDRESS, "a@b.c")], (), "is not allowed for devices"),
    ([(NameOID.COMMON_NAME, "est.lab")], (), "EST server's name"),
    ([CN], [x509.IPAddress(ipaddress.ip_address("10.0.0.1"))], "EST server's address"),
    ([CN], [x509.DNSName("est.lab.")], "EST server's name"),
    ([CN], [x509.DNSName("x.localhost")], "EST server's name"),
    ([CN], [x509.DirectoryName(x509.Name([x509.NameAttribute(*CN)]))], "DirectoryName is not allowed"),
    ([CN], [x509.DNSName(f"gw{i}.example") for i in range(9)], "at most 8"),
])
def test_outside_the_policy_is_refused(attrs, sans, why):
    outcome = DevicePolicy().first_enrollment(csr(attrs, sans), SERVER)
    assert isinstance(outcome, Refused) and why in outcome.reason, outcome


def test_dns_suffixes():
    policy = DevicePolicy(dns_suffixes=(".devices.example",))
    assert not isinstance(policy.first_enrollment(csr([CN], [x509.DNSName("gw.devices.example")]), SERVER),
                          Refused)
    outcome = policy.first_enrollment(csr([CN], [x509.DNSName("gw.example")]), SERVER)
    assert isinstance(outcome, Refused) and "outside .devices.example" in outcome.reason
