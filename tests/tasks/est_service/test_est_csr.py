"""Device keys and PKCS#10 requests; re-enroll keeps Subject and SAN (RFC 7030 §4.2.2)."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import AttributeOID, NameOID

from tasks.est_service.csr import (
    Curve,
    build_csr,
    build_reenroll_csr,
    encode_pkcs10,
    generate_key,
    same_identity,
    same_public_key,
)

SANS = [x509.DNSName("gw-7.local"), x509.IPAddress(ipaddress.ip_address("10.0.0.7"))]


@pytest.mark.parametrize(("curve", "hash_name"), [(Curve.P256, "sha256"), (Curve.P384, "sha384")])
def test_build_csr_per_curve(curve: Curve, hash_name: str, subject) -> None:
    key = generate_key(curve)
    assert key.curve.key_size == curve.value
    csr = build_csr(key, subject("gw-7"), SANS)
    assert csr.is_signature_valid
    assert csr.signature_hash_algorithm is not None
    assert csr.signature_hash_algorithm.name == hash_name
    assert csr.subject == subject("gw-7")
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == SANS


def test_challenge_password_attribute(subject) -> None:
    csr = build_csr(generate_key(), subject("gw"), challenge_password="dGxzLXVuaXF1ZQ==")
    attribute = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD)
    assert attribute.value == b"dGxzLXVuaXF1ZQ=="


def test_reenroll_keeps_subject_bytes_and_san(pki) -> None:
    # A subject with non-default string types and a multi-valued RDN: the CSR must carry
    # the very same DER, not a re-encoding with cryptography's defaults.
    subject = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]),
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "WvdS", _ASN1Type.PrintableString),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "gw", _ASN1Type.IA5String),
        ]),
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.COMMON_NAME, "gateway-0007", _ASN1Type.PrintableString)]),
    ])
    old_key = generate_key()
    current = pki.issue(old_key.public_key(), subject, sans=SANS)
    new_key = generate_key(Curve.P384)  # rekey
    csr = build_reenroll_csr(new_key, current)
    assert csr.subject.public_bytes() == current.subject.public_bytes()
    assert same_identity(csr, current)
    assert not same_public_key(csr, current)
    assert csr.public_key() == new_key.public_key()
    assert csr.is_signature_valid


def test_reenroll_without_san_stays_without_san(pki, subject) -> None:
    current = pki.issue(generate_key().public_key(), subject("plain"))
    csr = build_reenroll_csr(generate_key(), current)
    with pytest.raises(x509.ExtensionNotFound):
        csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert same_identity(csr, current)


def test_same_identity_detects_changes(pki, subject) -> None:
    current = pki.issue(generate_key().public_key(), subject("gw"), sans=SANS)
    key = generate_key()
    assert not same_identity(build_csr(key, subject("other"), SANS), current)
    assert not same_identity(build_csr(key, subject("gw"), SANS[:1]), current)
    assert not same_identity(build_csr(key, subject("gw")), current)


def test_encode_pkcs10_is_wrapped_base64_openssl_can_read(tmp_path, subject) -> None:
    csr = build_csr(generate_key(), subject("gateway-0001"), SANS)
    body = encode_pkcs10(csr)
    assert b"-----" not in body
    assert all(len(line) <= 64 for line in body.splitlines())
    path = tmp_path / "csr.b64"
    path.write_bytes(body)
    der = subprocess.run(["openssl", "base64", "-d", "-in", str(path)], capture_output=True,
                         check=True).stdout
    text = subprocess.run(["openssl", "req", "-inform", "DER", "-noout", "-subject", "-verify"],
                          input=der, capture_output=True, check=True)
    assert "CN = gateway-0001" in text.stdout.decode()
    assert "verify OK" in (text.stdout + text.stderr).decode()


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP521R1()), ed25519.Ed25519PrivateKey.generate()],
    ids=["P-521", "Ed25519"],
)
def test_other_keys_are_refused(key, subject) -> None:
    with pytest.raises(TypeError, match="P-256/P-384"):
        build_csr(key, subject("gw"))


def test_curve_hash() -> None:
    assert isinstance(Curve.P256.hash(), hashes.SHA256)
    assert isinstance(Curve.P384.hash(), hashes.SHA384)
