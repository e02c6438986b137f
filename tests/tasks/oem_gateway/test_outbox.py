"""The outbox format and its verification, against tampered records (no system boot: records made here)."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tasks.oem_gateway import outbox

UTC = dt.UTC
T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, days: int = 30) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(T0 - dt.timedelta(days=1)).not_valid_after(T0 + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(issuer_key, hashes.SHA256())


@dataclasses.dataclass
class Pki:
    ca: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    device: x509.Certificate


def make_pki(device: str = "gateway-0001") -> Pki:
    ca_key, dev_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test EST CA", ca_key, "Test EST CA", ca_key, ca=True, days=3650)
    return Pki(ca, ca_key, _cert(device, dev_key, "Test EST CA", ca_key, ca=False))


@pytest.fixture(scope="module")
def pki():
    return make_pki()


@pytest.fixture(scope="module")
def signer():
    return mldsa.MLDSA65PrivateKey.generate()


def make_records(pki: Pki, signer, n: int = 3, *, start: int = 1, prev: str = outbox.ZERO_HASH,
                 device: str = "gateway-0001") -> list[outbox.Record]:
    chain = (pki.device.public_bytes(Encoding.DER), pki.ca.public_bytes(Encoding.DER))
    public = signer.public_key().public_bytes_raw()
    out = []
    for seq in range(start, start + n):
        r = outbox.Record(device, seq, prev, int(T0.timestamp()) + seq, 10, seq * 10, outbox.aad_for(device, seq),
                          bytes(12), b"ciphertext%d" % seq, bytes(16), public, chain)
        r = dataclasses.replace(r, signature=signer.sign(outbox.signed_bytes(r), outbox.CONTEXT))
        out.append(r)
        prev = outbox.record_hash(r)
    return out


def files(records) -> list[tuple[str, bytes]]:
    return [(outbox.file_name(r.seq), outbox.encode(r)) for r in records]


def resign(r: outbox.Record, signer) -> outbox.Record:
    return dataclasses.replace(r, signature=signer.sign(outbox.signed_bytes(r), outbox.CONTEXT))


def failures(report) -> dict[int | None, str]:
    return {f.seq: f.message for f in report.findings if not f.ok}


def test_an_untouched_outbox_verifies(pki, signer):
    report = outbox.verify(files(make_records(pki, signer)), pki.ca)
    assert report.ok and len(report.findings) == 3 and report.notes == []


def test_encode_decode_round_trip(pki, signer):
    r = make_records(pki, signer, 1)[0]
    assert outbox.decode(outbox.encode(r)) == r


def test_edited_ciphertext_fails_the_signature(pki, signer):
    records = make_records(pki, signer)
    records[1] = dataclasses.replace(records[1], ciphertext=b"ciphertexT2")
    report = outbox.verify(files(records), pki.ca)
    assert not report.ok
    found = failures(report)
    assert found[2] == "the ML-DSA-65 signature does not verify"
    assert "does not link to batch 2" in found[3]  # the edit also breaks the hash chain


def test_a_removed_batch_is_a_gap(pki, signer):
    records = make_records(pki, signer, 4)
    report = outbox.verify(files(records[:1] + records[2:]), pki.ca)
    assert failures(report) == {3: "gap: sequence numbers 2..2 are missing"}


def test_a_replaced_batch_breaks_the_hash_chain(pki, signer):
    """Re-signed with the right key and number, but not the batch that was there: the next link breaks."""
    records = make_records(pki, signer, 3)
    records[1] = resign(dataclasses.replace(records[1], ciphertext=b"other"), signer)
    report = outbox.verify(files(records), pki.ca)
    assert list(failures(report)) == [3] and "does not link to batch 2" in failures(report)[3]


def test_a_renamed_file_is_caught(pki, signer):
    records = make_records(pki, signer, 2)
    fs = files(records)
    fs[1] = (outbox.file_name(7), fs[1][1])
    report = outbox.verify(fs, pki.ca)
    assert "file name says another sequence number" in failures(report)[2]


def test_a_renumbered_record_fails(pki, signer):
    records = make_records(pki, signer, 2)
    bad = dataclasses.replace(records[1], seq=5)
    report = outbox.verify([(outbox.file_name(1), outbox.encode(records[0])), (outbox.file_name(5),
                                                                              outbox.encode(bad))], pki.ca)
    assert "AAD" in failures(report)[5]


def test_a_duplicated_sequence_number_fails(pki, signer):
    records = make_records(pki, signer, 2)
    twin = resign(dataclasses.replace(records[1], ciphertext=b"twin"), signer)
    fs = files(records) + [(outbox.file_name(2) + ".copy", outbox.encode(twin))]
    report = outbox.verify(fs, pki.ca)
    assert not report.ok


def test_another_signing_key_is_refused(pki, signer):
    records = make_records(pki, signer, 3)
    other = mldsa.MLDSA65PrivateKey.generate()
    records[2] = resign(dataclasses.replace(records[2], public_key=other.public_key().public_bytes_raw()), other)
    report = outbox.verify(files(records), pki.ca)
    assert "another key" in failures(report)[3]
    pinned = outbox.verify(files(make_records(pki, signer, 1)), pki.ca,
                           expected_key=other.public_key().public_bytes_raw())
    assert "expected one" in failures(pinned)[1]


def test_a_certificate_from_another_ca_is_refused(pki, signer):
    rogue = make_pki()
    report = outbox.verify(files(make_records(rogue, signer, 1)), pki.ca)
    assert "is not issued by" in failures(report)[1]


def test_a_certificate_for_another_device_is_refused(pki, signer):
    report = outbox.verify(files(make_records(pki, signer, 1, device="gateway-0002")), pki.ca)
    assert "the certificate is for 'gateway-0001'" in failures(report)[1]


def test_a_batch_sealed_outside_the_certificates_validity_fails(pki, signer):
    r = make_records(pki, signer, 1)[0]
    late = resign(dataclasses.replace(r, sealed_at=int((T0 + dt.timedelta(days=60)).timestamp())), signer)
    report = outbox.verify(files([late]), pki.ca)
    assert "was not valid at" in failures(report)[1]


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"format": "l4emu-outbox-1"}', b"x" * (outbox.MAX_RECORD + 1),
                                 b'{"format": "l4emu-outbox-1", "seq": -1}'])
def test_garbage_records_fail_with_a_reason(raw, pki):
    report = outbox.verify([("batch-00000001.json", raw)], pki.ca)
    assert not report.ok and report.findings[0].message


def test_an_outbox_that_starts_later_is_noted_not_failed(pki, signer):
    first = make_records(pki, signer, 3)
    report = outbox.verify(files(first[1:]), pki.ca)
    assert report.ok and "starts at sequence number 2" in report.notes[0]


def test_cli_verify_outbox(tmp_path, pki, signer):
    from l4emu.cli import main
    ca = tmp_path / "ca.crt"
    ca.write_bytes(pki.ca.public_bytes(Encoding.PEM))
    box = tmp_path / "outbox"
    box.mkdir()
    records = make_records(pki, signer, 3)
    for name, raw in files(records):
        (box / name).write_bytes(raw)
    assert main(["verify-outbox", str(box), "--ca", str(ca)]) == 0
    (box / outbox.file_name(2)).unlink()
    assert main(["verify-outbox", str(box), "--ca", str(ca)]) == 1
    assert main(["verify-outbox", str(tmp_path / "nope"), "--ca", str(ca)]) == 2
    assert main(["verify-outbox", str(box), "--ca", str(tmp_path / "missing.crt")]) == 2
