"""Regenerate the golden EST exchange files in this directory (run by hand, not by pytest).

    .venv/bin/python tests/tasks/est_service/golden/regenerate.py

Certificates and keys come from `cryptography` with fixed validity dates (tests inject
``now``, so the files never expire). Everything on the wire -- the certs-only PKCS#7 bodies,
their base64 (wrapped and unwrapped), the base64 CSR and the CsrAttrs DER -- is produced by
the `openssl` command line tool, independently of the code under test.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).parent
UTC = dt.UTC
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Golden EST Root")])

CSRATTRS_CONF = """\
asn1=SEQUENCE:attrs
[attrs]
cp=OID:challengePassword
ec=SEQUENCE:ecattr
ext=SEQUENCE:extreq
sig=OID:ecdsa-with-SHA384
[ecattr]
type=OID:id-ecPublicKey
vals=SET:curves
[curves]
c=OID:secp384r1
[extreq]
type=OID:extReq
vals=SET:macattr
[macattr]
m=OID:1.3.6.1.1.1.1.22
"""


def ca_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return (
        x509.CertificateBuilder().subject_name(CA_NAME).issuer_name(CA_NAME)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2025, 1, 1, tzinfo=UTC))
        .not_valid_after(dt.datetime(2045, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def device_cert(csr: x509.CertificateSigningRequest, issuer_key: ec.EllipticCurvePrivateKey
                ) -> x509.Certificate:
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        x509.CertificateBuilder().subject_name(csr.subject).issuer_name(CA_NAME)
        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2025, 6, 1, tzinfo=UTC))
        .not_valid_after(dt.datetime(2026, 6, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
        .add_extension(san, critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, check=True,
                          capture_output=True).stdout


def certs_only_bodies(name: str, pem_file: Path) -> None:
    der = openssl("crl2pkcs7", "-nocrl", "-certfile", str(pem_file), "-outform", "DER")
    (HERE / f"{name}.b64").write_bytes(openssl("base64", stdin=der))
    (HERE / f"{name}.nolf.b64").write_bytes(openssl("base64", "-A", stdin=der))


def main() -> None:
    ta_key = ec.generate_private_key(ec.SECP256R1())
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    device_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-0001")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("gateway-0001.local")]),
                       critical=False)
        .sign(device_key, hashes.SHA256())
    )
    ta = ca_cert(ta_key)
    (HERE / "ta.pem").write_bytes(ta.public_bytes(Encoding.PEM))
    (HERE / "device.key.pem").write_bytes(
        device_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (HERE / "device.csr.der").write_bytes(csr.public_bytes(Encoding.DER))
    (HERE / "device.csr.b64").write_bytes(openssl("base64", "-in", str(HERE / "device.csr.der")))
    (HERE / "device.crt.pem").write_bytes(device_cert(csr, ta_key).public_bytes(Encoding.PEM))
    (HERE / "rogue.crt.pem").write_bytes(device_cert(csr, rogue_key).public_bytes(Encoding.PEM))
    certs_only_bodies("cacerts", HERE / "ta.pem")
    certs_only_bodies("enroll", HERE / "device.crt.pem")
    certs_only_bodies("rogue_enroll", HERE / "rogue.crt.pem")
    conf = HERE / "csrattrs.conf"
    conf.write_text(CSRATTRS_CONF)
    der = openssl("asn1parse", "-genconf", str(conf), "-noout", "-out", "/dev/stdout")
    (HERE / "csrattrs.b64").write_bytes(openssl("base64", stdin=der))


if __name__ == "__main__":
    main()
