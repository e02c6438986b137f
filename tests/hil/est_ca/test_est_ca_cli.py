"""``l4emu est-ca`` (hil.est_ca.cli.main): a real server process, and the error paths."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from cryptography import x509

from hil.est_ca.cli import main


def test_serve_prints_url_serves_and_stops_on_sigterm(tmp_path, tools) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.est_ca", "serve", "--state-dir", str(state), "--port", "0",
         "--defer", "1", "--retry-after", "9", "--validity-days", "2", "--curve", "P-384"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # blocks until the server is listening
        match = re.fullmatch(
            r"EST CA listening on (https://127\.0\.0\.1:(\d+)/\.well-known/est/)\n", first)
        assert match, first + proc.stderr.read() if proc.poll() is not None else first
        url = match.group(1)
        assert proc.stdout.readline() == f"trust anchor: {state / 'ca.crt'} (created)\n"
        ca = x509.load_pem_x509_certificate((state / "ca.crt").read_bytes())
        assert ca.public_key().curve.name == "secp384r1"
        curl = ["curl", "--silent", "--cacert", str(state / "ca.crt"), "--max-time", "20",
                "--output", "/dev/null", "--write-out", "%{http_code}"]
        assert subprocess.run([*curl, url + "cacerts"], capture_output=True, text=True,
                              timeout=30).stdout == "200"
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", "dev.key", "-subj",
                        "/CN=gw", "-outform", "DER", "-out", "dev.csr"], cwd=tmp_path,
                       check=True, capture_output=True)
        subprocess.run(["openssl", "base64", "-in", "dev.csr", "-out", "dev.b64"], cwd=tmp_path,
                       check=True)
        deferred = subprocess.run(
            [*curl, "-D", "-", "-u", "estuser:estpwd", "-H", "Content-Type: application/pkcs10",
             "--data-binary", "@dev.b64", url + "simpleenroll"], cwd=tmp_path,
            capture_output=True, text=True, timeout=30).stdout
        assert "Retry-After: 9\n" in deferred and deferred.endswith("202")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert re.search(r"est-ca GET /\.well-known/est/cacerts peer=127\.0\.0\.1:\d+ "
                     r"client=anonymous -> 200 sent 2 CA certificates", err), err


def test_ca_cert_prints_the_trust_anchor(tmp_path, capsys) -> None:
    assert main(["ca-cert", "--state-dir", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out.encode()
    assert printed == (tmp_path / "s" / "ca.crt").read_bytes()


def test_non_loopback_is_refused(tmp_path, capsys) -> None:
    code = main(["serve", "--state-dir", str(tmp_path / "s"), "--host", "0.0.0.0"])
    assert code == 1
    assert "[EstCaError]: refusing to bind 0.0.0.0" in capsys.readouterr().err


def test_usage_errors(tmp_path, capsys) -> None:
    assert main([]) == 2
    assert main(["serve", "--fault", "explode"]) == 2
    assert main(["serve", "--state-dir", str(tmp_path), "--defer", "-1"]) == 1
    assert "invalid choice" in capsys.readouterr().err


def test_rotate_starts_a_new_issuing_ca(tmp_path, capsys) -> None:
    state = tmp_path / "s"
    assert main(["ca-cert", "--state-dir", str(state)]) == 0
    assert main(["rotate", "--state-dir", str(state)]) == 0
    assert "now issuing from CN=l4emu development EST issuing CA 2" in capsys.readouterr().out
    assert (state / "issuing-0002.crt").exists()
