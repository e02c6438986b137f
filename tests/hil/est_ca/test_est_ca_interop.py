"""The development CA driven by clients that are not ours: Debian's curl and openssl.

This is the classic testrfc7030.com recipe (docs/reference §D.5) against the in-process CA:
openssl makes the keys and DER CSRs, curl talks EST over TLS (HTTP Basic first, then the
issued certificate as TLS client certificate), openssl decodes and verifies the PKCS#7.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from hil.est_ca import EstCa
from tasks.est_service.http_transport import HttpTransport, make_ssl_context
from tasks.est_service.messages import HttpRequest
from tasks.est_service.results import ErrorKind, EstError

pytestmark = pytest.mark.usefixtures("tools")

SAN = "subjectAltName=DNS:gateway-0001.local"


def run(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, timeout=30)


def ok(*args: str, cwd: Path) -> bytes:
    done = run(*args, cwd=cwd)
    assert done.returncode == 0, f"{args[0]} failed: {done.stderr.decode()}"
    return done.stdout


class Curl:
    """curl against the CA, trusting only the given file; returns (status, headers, body)."""

    def __init__(self, url: str, cwd: Path, cacert: Path) -> None:
        self.url, self.cwd, self.cacert = url, cwd, cacert

    def __call__(self, operation: str, *extra: str, data: str | None = None
                 ) -> tuple[int, str, bytes]:
        args = ["curl", "--silent", "--show-error", "--max-time", "20",
                "--cacert", str(self.cacert), "--dump-header", "headers.txt",
                "--output", "body.bin", "--write-out", "%{http_code}", *extra]
        if data is not None:
            args += ["-H", "Content-Type: application/pkcs10", "--data-binary", f"@{data}"]
        status = ok(*args, f"{self.url}/{operation}", cwd=self.cwd)
        return (int(status), (self.cwd / "headers.txt").read_text(),
                (self.cwd / "body.bin").read_bytes())


def make_csr(cwd: Path, name: str, subject: str, *, key: str | None = None,
             pem: bool = False, san: str = SAN) -> None:
    """openssl req: new P-256 key (or reuse ``key``) and a base64 DER CSR in ``name``.b64."""
    key_args = (["-key", key] if key else
                ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{name}.key"])
    ok("openssl", "req", "-new", *key_args, "-subj", subject, "-addext", san,
       "-outform", "PEM" if pem else "DER", "-out", f"{name}.csr", cwd=cwd)
    if pem:
        (cwd / f"{name}.b64").write_bytes((cwd / f"{name}.csr").read_bytes())
    else:
        ok("openssl", "base64", "-in", f"{name}.csr", "-out", f"{name}.b64", cwd=cwd)


def p7_to_pem(cwd: Path, body: bytes, out: str) -> list[x509.Certificate]:
    (cwd / "p7.b64").write_bytes(body)
    der = ok("openssl", "base64", "-d", "-in", "p7.b64", cwd=cwd)
    done = run("openssl", "pkcs7", "-inform", "DER", "-print_certs", "-out", out,
               cwd=cwd, stdin=der)
    assert done.returncode == 0, done.stderr.decode()
    return x509.load_pem_x509_certificates((cwd / out).read_bytes())


@pytest.fixture
def curl(running, est_ca, tmp_path) -> Curl:
    return Curl(running.url, tmp_path, est_ca.ca_cert_path)


def test_curl_openssl_enroll_and_reenroll(curl, est_ca, tmp_path) -> None:
    cwd = tmp_path
    # 1. CA certificates, decoded and checked by openssl.
    status, _, body = curl("cacerts")
    assert status == 200
    assert set(p7_to_pem(cwd, body, "cacerts.pem")) == {est_ca.issuing, est_ca.certificate}

    # 2. First enrollment with HTTP Basic.
    make_csr(cwd, "dev", "/CN=gateway-0001")
    status, headers, body = curl("simpleenroll", "-u", "estuser:estpwd", data="dev.b64")
    assert status == 200
    assert "application/pkcs7-mime; smime-type=certs-only" in headers.lower()
    [first] = p7_to_pem(cwd, body, "dev.pem")
    verify = ok("openssl", "verify", "-CAfile", "cacerts.pem", "dev.pem", cwd=cwd)
    assert verify.strip() == b"dev.pem: OK"
    csr = x509.load_der_x509_csr((cwd / "dev.csr").read_bytes())
    assert first.subject.public_bytes() == csr.subject.public_bytes()
    assert first.public_key() == csr.public_key()

    # 3. Re-enrollment authenticated by the issued certificate (same key: renewal).
    make_csr(cwd, "re", "/CN=gateway-0001", key="dev.key")
    status, _, body = curl("simplereenroll", "--cert", "dev.pem", "--key", "dev.key",
                           data="re.b64")
    assert status == 200
    [second] = p7_to_pem(cwd, body, "re.pem")
    assert second.serial_number != first.serial_number
    assert second.subject.public_bytes() == first.subject.public_bytes()
    assert second.extensions.get_extension_for_class(x509.SubjectAlternativeName) == \
        first.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ok("openssl", "verify", "-CAfile", "cacerts.pem", "re.pem", cwd=cwd).strip() == \
        b"re.pem: OK"

    # 4. Re-enrollment that changes the subject is refused; so is one without a certificate.
    make_csr(cwd, "renamed", "/CN=gateway-0002", key="dev.key")
    status, _, body = curl("simplereenroll", "--cert", "dev.pem", "--key", "dev.key",
                           data="renamed.b64")
    assert (status, b"Subject and SubjectAltName" in body) == (400, True)
    status, _, _ = curl("simplereenroll", "-u", "estuser:estpwd", data="re.b64")
    assert status == 403


def test_curl_sees_401_challenge_and_pem_refusal(curl, tmp_path) -> None:
    make_csr(tmp_path, "dev", "/CN=gateway-0001")
    status, headers, _ = curl("simpleenroll", data="dev.b64")
    assert status == 401
    assert 'www-authenticate: basic realm="l4emu est"' in headers.lower()
    status, _, _ = curl("simpleenroll", "-u", "estuser:wrong", data="dev.b64")
    assert status == 401
    make_csr(tmp_path, "pem", "/CN=gateway-0001", pem=True)
    status, _, body = curl("simpleenroll", "-u", "estuser:estpwd", data="pem.b64")
    assert status == 400 and b"PEM armour is not allowed" in body


def test_curl_deferred_then_issued(curl, running, tmp_path) -> None:
    running.update(defer=1, retry_after=60)
    make_csr(tmp_path, "dev", "/CN=gateway-0001")
    status, headers, _ = curl("simpleenroll", "-u", "estuser:estpwd", data="dev.b64")
    assert status == 202
    assert "retry-after: 60" in headers.lower()
    status, _, body = curl("simpleenroll", "-u", "estuser:estpwd", data="dev.b64")
    assert status == 200 and p7_to_pem(tmp_path, body, "dev.pem")


def test_curl_csrattrs_parse_with_openssl(curl, tmp_path) -> None:
    status, headers, body = curl("csrattrs")
    assert status == 200 and "content-type: application/csrattrs" in headers.lower()
    (tmp_path / "attrs.b64").write_bytes(body)
    der = ok("openssl", "base64", "-d", "-in", "attrs.b64", cwd=tmp_path)
    parsed = run("openssl", "asn1parse", "-inform", "DER", cwd=tmp_path, stdin=der)
    assert parsed.returncode == 0
    assert b"id-ecPublicKey" in parsed.stdout and b"prime256v1" in parsed.stdout


def test_curl_rejects_server_with_wrong_trust_anchor(running, tmp_path) -> None:
    other = EstCa(tmp_path / "other")
    done = run("curl", "--silent", "--cacert", str(other.ca_cert_path),
               f"{running.url}/cacerts", cwd=tmp_path)
    assert done.returncode == 60  # CURLE_PEER_FAILED_VERIFICATION


def test_curl_device_certificate_cannot_become_the_est_server(curl, running, est_ca,
                                                                tmp_path) -> None:
    """The issue's attack, replayed with curl + openssl: a device certificate asks for the
    server's identity and is refused everywhere; the device certificate itself is refused by
    TLS clients as a server certificate (clientAuth only)."""
    cwd = tmp_path
    make_csr(cwd, "dev", "/CN=gateway-0001")
    status, _, body = curl("simpleenroll", "-u", "estuser:estpwd", data="dev.b64")
    assert status == 200
    [device] = p7_to_pem(cwd, body, "dev.pem")
    make_csr(cwd, "srv", "/CN=l4emu EST server", san="subjectAltName=IP:127.0.0.1,DNS:localhost")
    as_device = ("--cert", "dev.pem", "--key", "dev.key")
    # 1. the device certificate instead of HTTP Basic: 401, no certificate.
    status, _, _ = curl("simpleenroll", *as_device, data="srv.b64")
    assert status == 401
    # 2. as a re-enrollment of the device: the identity cannot change.
    status, _, body = curl("simplereenroll", *as_device, data="srv.b64")
    assert (status, b"Subject and SubjectAltName" in body) == (400, True)
    # 3. even with the bootstrap credentials, a device cannot be named like the server.
    status, _, body = curl("simpleenroll", "-u", "estuser:estpwd", data="srv.b64")
    assert (status, b"cannot name the EST server" in body) == (400, True)
    assert [r.status for r in running.records] == [200, 401, 400, 400]
    # 4. the device certificate presented as a TLS server certificate: curl refuses it.
    chain = cwd / "dev-chain.pem"
    chain.write_bytes((cwd / "dev.pem").read_bytes() + est_ca.issuing.public_bytes(Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, cwd / "dev.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept(count: int) -> None:
        for _ in range(count):
            conn, _ = listener.accept()
            with conn:
                try:
                    context.wrap_socket(conn, server_side=True).close()
                except (ssl.SSLError, OSError):
                    pass  # the client aborts the handshake: that is the point

    thread = threading.Thread(target=accept, args=(2,))
    thread.start()
    try:
        done = run("curl", "--silent", "--show-error", "--max-time", "20", "--cacert",
                   str(est_ca.ca_cert_path), "--resolve", f"gateway-0001.local:{port}:127.0.0.1",
                   f"https://gateway-0001.local:{port}/.well-known/est/cacerts", cwd=cwd)
        # est_service's own TLS client (the context the task uses) refuses it too, before any
        # HTTP -- so no Basic credentials can go to an impostor.
        ours = HttpTransport.tls("127.0.0.1", port, make_ssl_context([est_ca.certificate]),
                                 server_hostname="gateway-0001.local").send(
            HttpRequest("GET", "/.well-known/est/cacerts", (("Host", "gateway-0001.local"),)))
    finally:
        thread.join(timeout=30)
        listener.close()
    assert done.returncode == 60, done.stderr  # CURLE_PEER_FAILED_VERIFICATION
    assert b"unsuitable certificate purpose" in done.stderr
    assert isinstance(ours, EstError) and ours.kind is ErrorKind.TLS_FAILED, ours
    assert "unsuitable certificate purpose" in ours.detail
    assert list(device.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
