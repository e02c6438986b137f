"""The CA's state directory and certificate issuance, without the network."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil.est_ca import EstCa, EstCaError, Refused, serve


def issued(result: x509.Certificate | Refused) -> x509.Certificate:
    assert isinstance(result, x509.Certificate), result
    return result


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def csr_for(key, cn: str = "gw", sans=()) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_first_start_creates_a_private_ca(tmp_path) -> None:
    ca = EstCa(tmp_path / "state")
    assert ca.created
    assert mode(ca.state_dir) == 0o700
    assert mode(ca.ca_key_path) == 0o600
    assert sorted(p.name for p in ca.state_dir.iterdir()) == [
        ".lock", "ca.crt", "ca.key", "issuing-0001.crt", "issuing-0001.key"]
    assert mode(ca.state_dir / "issuing-0001.key") == 0o600
    ca.issuing.verify_directly_issued_by(ca.certificate)
    cert = x509.load_pem_x509_certificate(ca.ca_cert_path.read_bytes())
    assert cert == ca.certificate
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"


def test_second_start_reloads_the_same_ca(tmp_path) -> None:
    first = EstCa(tmp_path / "state", curve="P-384")
    second = EstCa(tmp_path / "state", curve="P-256")  # the curve applies only to creation
    assert not second.created
    assert second.certificate.public_bytes(Encoding.DER) == \
        first.certificate.public_bytes(Encoding.DER)
    assert second.certificate.public_key().curve.name == "secp384r1"
    issued = second.issue(csr_for(ec.generate_private_key(ec.SECP256R1())))
    assert isinstance(issued, x509.Certificate)
    issued.verify_directly_issued_by(first.issuing)
    assert second.issuing == first.issuing
    assert isinstance(issued.signature_hash_algorithm, hashes.SHA384)


def test_half_a_ca_or_a_foreign_key_is_refused(tmp_path) -> None:
    ca = EstCa(tmp_path / "a")
    other = EstCa(tmp_path / "b")
    other.ca_key_path.write_bytes(ca.ca_key_path.read_bytes())
    with pytest.raises(EstCaError, match="does not belong"):
        EstCa(tmp_path / "b")
    ca.ca_cert_path.unlink()
    with pytest.raises(EstCaError, match="half a CA"):
        EstCa(tmp_path / "a")
    with pytest.raises(EstCaError, match="curve must be one of"):
        EstCa(tmp_path / "c", curve="P-521")


def test_issue_copies_subject_and_san_with_configured_validity(tmp_path) -> None:
    now = dt.datetime(2031, 5, 4, 3, 2, 1, tzinfo=dt.UTC)
    ca = EstCa(tmp_path / "s", validity=dt.timedelta(hours=5), clock=lambda: now)
    sans = [x509.DNSName("gw.local"), x509.IPAddress(ipaddress.ip_address("10.1.2.3"))]
    cert = ca.issue(csr_for(ec.generate_private_key(ec.SECP384R1()), "gw", sans))
    assert isinstance(cert, x509.Certificate)
    assert cert.subject.rfc4514_string() == "CN=gw"
    assert list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == sans
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (
        now, now + dt.timedelta(hours=5))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.issued_by_us(cert)
    assert ca.issue(csr_for(ec.generate_private_key(ec.SECP256R1())),
                    validity=dt.timedelta(minutes=1)).not_valid_after_utc == \
        now + dt.timedelta(minutes=1)


def test_issue_refuses_other_keys_and_bad_signatures(tmp_path) -> None:
    ca = EstCa(tmp_path / "s")
    rsa_csr = csr_for(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert ca.issue(rsa_csr) == Refused("only EC P-256 and P-384 keys are accepted")
    der = bytearray(csr_for(ec.generate_private_key(ec.SECP256R1())).public_bytes(Encoding.DER))
    der[-5] ^= 0x01  # flip a bit in the signature
    tampered = x509.load_der_x509_csr(bytes(der))
    assert ca.issue(tampered) == Refused("CSR signature does not verify")


def test_foreign_and_expired_certificates_are_not_ours(tmp_path) -> None:
    ca = EstCa(tmp_path / "a")
    other = EstCa(tmp_path / "b")
    foreign = issued(other.issue(csr_for(ec.generate_private_key(ec.SECP256R1()))))
    assert not ca.issued_by_us(foreign)
    later = EstCa(tmp_path / "a", clock=lambda: dt.datetime.now(dt.UTC)
                  + dt.timedelta(days=400))
    mine = issued(ca.issue(csr_for(ec.generate_private_key(ec.SECP256R1()))))
    assert ca.issued_by_us(mine) and not later.issued_by_us(mine)


def test_server_credentials(tmp_path) -> None:
    ca = EstCa(tmp_path / "s")
    cert_path, key_path = ca.server_credentials(extra_hosts=["est.lab", "127.0.0.1"])
    assert mode(key_path) == 0o600
    leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    leaf.verify_directly_issued_by(ca.issuing)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                        ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "est.lab"]
    assert not [p for p in ca.state_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_only_loopback_by_default(tmp_path, host: str) -> None:
    with pytest.raises(EstCaError, match="not a loopback address"):
        serve(EstCa(tmp_path / "s"), host, 0)


def test_loose_key_permissions_are_reported(tmp_path, caplog) -> None:
    ca = EstCa(tmp_path / "s")
    ca.ca_key_path.chmod(0o644)
    EstCa(tmp_path / "s")
    assert "should be mode 0600" in caplog.text


def test_rotation_issues_from_a_new_intermediate_and_keeps_devices(tmp_path) -> None:
    ca = EstCa(tmp_path / "s")
    key = ec.generate_private_key(ec.SECP256R1())
    before = issued(ca.issue(csr_for(key, "gw", [x509.DNSName("gw.local")])))
    first_issuing = ca.issuing
    second_issuing = ca.rotate_issuing()
    assert second_issuing != first_issuing and ca.ca_certificates == [second_issuing, ca.certificate]
    second_issuing.verify_directly_issued_by(ca.certificate)
    after = issued(ca.reissue(csr_for(key, "gw", [x509.DNSName("gw.local")]), before))
    after.verify_directly_issued_by(second_issuing)
    # Reloaded from disk: the same issuing CAs, the old device certificate still a device.
    again = EstCa(tmp_path / "s")
    assert again.issuing == second_issuing
    assert again.device_identity(before) is before
    assert again.device_identity(after) is after  # using the new one retires the old one ...
    assert again.device_identity(before) == "superseded: the device has used a newer certificate"
    assert EstCa(tmp_path / "s").device_identity(before).startswith("superseded")  # ... durably


def test_reissue_takes_the_identity_of_the_current_certificate(tmp_path) -> None:
    ca = EstCa(tmp_path / "s")
    key = ec.generate_private_key(ec.SECP256R1())
    current = issued(ca.issue(csr_for(key, "gw", [x509.DNSName("gw.local")])))
    assert ca.reissue(csr_for(key, "l4emu EST server", [x509.DNSName("gw.local")]), current) == \
        Refused("re-enrollment must keep the Subject and SubjectAltName of the current "
                "certificate (RFC 7030 §4.2.2)")
    assert isinstance(ca.reissue(csr_for(key, "gw"), current), Refused)  # SAN dropped


def test_state_from_an_older_single_tier_ca_is_refused_clearly(tmp_path) -> None:
    ca = EstCa(tmp_path / "s")
    key = load_pem_private_key(ca.ca_key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    old = (x509.CertificateBuilder().subject_name(ca.certificate.subject)
           .issuer_name(ca.certificate.subject).public_key(key.public_key())
           .serial_number(1).not_valid_before(ca.certificate.not_valid_before_utc)
           .not_valid_after(ca.certificate.not_valid_after_utc)
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(key, hashes.SHA256()))
    ca.ca_cert_path.write_bytes(old.public_bytes(Encoding.PEM))
    with pytest.raises(EstCaError, match="older l4emu"):
        EstCa(tmp_path / "s")
