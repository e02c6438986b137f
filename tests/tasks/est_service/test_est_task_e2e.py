"""est_service end to end: a booted image (netproxy + est_service + a client task) against the
development EST CA, started in-process on a free loopback port.

Every byte between est_service and the CA crosses kernel IPC (est_service -> netproxy through a
shared dataspace) and TLS terminates inside est_service. The CA's certificate reaches the image
as a boot module (``rom/est-ta``) written next to the image file.

One module-scoped boot enrolls a device; the tests that need "a device that already has a
certificate" copy that device's work directory (encrypted key + certificate + chain) into their
own run directory, so every test boots exactly once and starts from the same, known serial.
Re-enrollment is made due at once with ``renew_at_fraction`` close to 0 (the task runs in its
own process: config, not an injected clock); ``min_reenroll_interval_s`` keeps it to one.
Nothing sleeps: the client task polls STATUS with kernel receive timeouts and the test runs the
system until the client has logged its RESULT line.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtensionOID

from hil.est_ca import EstCa, Fault, ServerOptions, serve
from kernel_model.abi import Err
from kernel_model.host.console import RecordingConsole
from kernel_model.host.images import load_image
from kernel_model.host.supervisor import Supervisor
from protocols.est_service import AUTH_REFUSED
from systemlib import System
from tasks.est_service.results import ErrorKind
from tasks.est_service.store import Store

SUBJECT = {"CN": "gateway-0001", "O": "WvdS"}
SANS = ["dns:gateway-0001.local", "ip:10.0.0.7"]
BOOT_TIMEOUT = 100  # a hard cap for a stuck system, not a speed expectation


# ------------------------------------------------------------------------------------ helpers
def est_config(port: int, **overrides) -> dict:
    cfg = {
        "server": {"endpoint": f"127.0.0.1:{port}", "label": None},
        "trust_anchor_rom": "est-ta",
        "auth": {"username": "estuser", "password": "estpwd"},
        "subject": SUBJECT,
        "sans": SANS,
        "curve": "P-256",
        "renew_at_fraction": 0.66,
        "backoff": {"initial_s": 0.2, "factor": 2, "max_s": 2},
        "deferral": {"min_delay_s": 0.1, "max_deferrals": 3},
        "timeout_s": 30,  # only the HANG fault is meant to time out
        "min_reenroll_interval_s": 3600,
        "net": {"gate": "net", "shm": "net_shm"},
        "clients": {"gateway": {"gate": "est_gw", "shm": "est_gw_shm"}},
    }
    cfg.update(overrides)
    return cfg


def image(port: int, config: dict, client_args: list[str], *, allowed_port: int | None = None) -> str:
    doc = {
        "name": "est-e2e",
        "ram": "32MiB",
        "modules": {"est-ta": "ta.pem"},
        "run": {"until": ["client"]},
        "objects": {
            "net": {"type": "gate"},
            "net_shm": {"type": "dataspace", "size": "128KiB"},
            "est_gw": {"type": "gate"},
            "est_gw_shm": {"type": "dataspace", "size": "16KiB"},
        },
        "tasks": {
            "proxy": {
                "program": "netproxy.task",
                "network": {"connect": [f"127.0.0.1:{allowed_port or port}"]},
                "config": {"clients": {"est": {"gate": "net", "shm": "net_shm"}}},
                "caps": {"net": "net:svr", "net_shm": "net_shm:rw"},
            },
            "est": {
                "program": "est_service.task",
                "config": config,
                "caps": {"net": "net:rw", "net_shm": "net_shm:rw", "est_gw": "est_gw:svr",
                         "est_gw_shm": "est_gw_shm:rw", "rom": "rom:r"},
            },
            "client": {
                "program": "testing.est_client",
                "args": client_args,
                "caps": {"est": "est_gw:rw", "est_shm": "est_gw_shm:rw"},
            },
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def only_result(system: System, tag: str = "client") -> dict:
    results = system.results(tag)
    assert len(results) == 1, f"{tag} logged {len(results)} RESULT lines:\n{system.console.text()}"
    return results[0]


def run_client(system: System) -> dict:
    """Run until the client task has logged its RESULT (the image ends when it exits)."""
    system.run(timeout=BOOT_TIMEOUT, until=lambda: "RESULT " in "\n".join(system.lines("client")))
    return only_result(system)


def est_log(system: System) -> str:
    return "\n".join(system.lines("est"))


def files(workdir: Path) -> Path:
    """The work dir's files as a host directory (a booted task's live in its budget image)."""
    from kernel_model.host import workdirs
    return workdirs.export_files(workdir, Path(tempfile.mkdtemp(prefix="l4emu-est-")) / "est") \
        if workdirs.image_for(workdir).exists() else workdir


def stored(workdir: Path):
    return Store(files(workdir)).load()


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def san(cert: x509.Certificate):
    return cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value


class CaLog(logging.Handler):
    """The CA's request log lines with their timestamps (it logs one line per request)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.entries: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append((record.created, record.getMessage()))


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> EstCa:
    return EstCa(tmp_path_factory.mktemp("est-ca"), validity=dt.timedelta(days=1))


@pytest.fixture(scope="module")
def server(ca):
    with serve(ca, "127.0.0.1", 0, ServerOptions(hang_limit=10)) as running:
        yield running


@pytest.fixture(autouse=True)
def reset_server(request):
    """Every test starts with a well-behaved CA (faults and deferral switched off)."""
    yield
    if "server" in request.fixturenames:
        running = request.getfixturevalue("server")
        running.release_hung()  # a HANG test's requests end (and are recorded) before the next test
        defaults = ServerOptions(hang_limit=10)
        running.update(**{f.name: getattr(defaults, f.name) for f in dataclasses.fields(ServerOptions)})


@pytest.fixture
def ta_files(ca) -> dict[str, str]:
    return {"ta.pem": ca.certificate_pem.decode()}


def _boot_once(directory: Path, image_text: str, files: dict[str, str]) -> tuple[System, Supervisor]:
    path = directory / "image.yaml"
    path.write_text(textwrap.dedent(image_text))
    for name, content in files.items():
        (directory / name).write_text(content)
    from kernel_model.host.confinement import policy_for
    sup = Supervisor(load_image(path), RecordingConsole(), confinement=policy_for, run_dir=directory / "run")
    sup.start()
    return System(sup, sup.console), sup


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory, ca, server):
    """A first enrollment, booted once for the module: the device's work dir and what was seen."""
    directory = tmp_path_factory.mktemp("enrolled")
    first = len(server.records)
    system, sup = _boot_once(directory, image(server.port, est_config(server.port),
                                              ["until=success", "probe=1", "max_ms=90000"]),
                             {"ta.pem": ca.certificate_pem.decode()})
    try:
        result = run_client(system)
        text = system.console.text()
        lines = est_log(system)
    finally:
        sup.shutdown()
    return {"workdir": files(directory / "run" / "est"), "result": result, "records": server.records[first:],
            "console": text, "est_log": lines}


@pytest.fixture
def device(enrolled, tmp_path) -> Path:
    """This test's copy of the enrolled device's work directory (boot() uses tmp_path/run)."""
    workdir = tmp_path / "run" / "est"
    shutil.copytree(enrolled["workdir"], workdir)
    return workdir


# ------------------------------------------------------------------------------------ enroll
def test_first_enrollment_through_the_proxy(enrolled, ca):
    result, records = enrolled["result"], enrolled["records"]
    assert result["successes"] == 1 and result["errors"] == 0, enrolled["console"]
    assert result["cert_state"] == "VALID" and result["get_cert"] == "OK" and result["pem_matches_der"]
    # The CA saw /cacerts, then /simpleenroll authenticated with HTTP Basic, and issued that serial.
    assert [(r.method, r.path.rsplit("/", 1)[1], r.status) for r in records] == [
        ("GET", "cacerts", 200), ("POST", "simpleenroll", 200)]
    assert records[1].client == "basic:estuser"
    assert f"issued serial={result['serial']} " in records[1].outcome
    # What the client got is what est_service stored, and it chains to the CA.
    state = stored(enrolled["workdir"])
    cert = state.certificate
    assert hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest() == result["cert_sha256"]
    cert.verify_directly_issued_by(ca.issuing)
    assert result["chain_sha256"] == [hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest()
                                      for c in (cert, ca.issuing, ca.certificate)]
    assert cert.subject.rfc4514_string() == "O=WvdS,CN=gateway-0001"
    assert [str(n.value) for n in san(cert)] == ["gateway-0001.local", "10.0.0.7"]
    assert f"enrolled: serial={result['serial']}" in enrolled["est_log"]


def test_device_key_is_encrypted_at_rest_and_matches_the_certificate(enrolled):
    workdir = enrolled["workdir"]
    raw = (workdir / "est-state.sealed").read_bytes()
    assert raw[:4] == b"L4ES" and b"PRIVATE KEY" not in raw and b"CERTIFICATE" not in raw
    state = stored(workdir)
    der_key = state.key.private_numbers().private_value.to_bytes(32, "big")
    assert der_key not in raw and der_key.hex().encode() not in raw.lower()
    assert spki(state.certificate) == state.key.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    # Without the key-encryption key the state cannot be opened (and is not silently replaced).
    copy = workdir.parent / "no-kek"
    shutil.copytree(workdir, copy)
    (copy / "est-kek.bin").unlink()
    with pytest.raises(Exception, match=r"est-kek\.bin is missing"):
        stored(copy)
    assert not list(workdir.glob("*.tmp")) and not list(workdir.glob(".*.tmp")), "a temporary file was left behind"


def test_malformed_service_requests_get_a_status(enrolled):
    probe = enrolled["result"]["probe"]
    assert probe == {"empty": "BAD_REQUEST", "unknown_op": "BAD_REQUEST", "bad_format": "BAD_REQUEST",
                     "status_extra": "BAD_REQUEST", "cert_no_format": "BAD_REQUEST",
                     "ipc_length_too_long": -Err.EMSGTOOLONG, "ipc_wrong_proto": -Err.EBADPROTO}
    # ... and est_service went on to answer STATUS and GET_CERT afterwards.
    assert enrolled["result"]["get_cert"] == "OK"


# ------------------------------------------------------------------------------------ re-enroll
def test_reenrollment_uses_the_current_certificate_for_tls_client_auth(boot, server, device, ta_files):
    old = stored(device).certificate
    first = len(server.records)
    system = boot(image(server.port, est_config(server.port, renew_at_fraction=1e-6), ["until=success"]),
                  ta_files)
    result = run_client(system)
    records = server.records[first:]
    assert result["successes"] == 1 and result["serial"] != f"{old.serial_number:x}", system.console.text()
    # /cacerts first (the renewal schedule refreshes the CA certificates), then the renewal.
    assert [(r.path.rsplit("/", 1)[1], r.status) for r in records] == [("cacerts", 200), ("simplereenroll", 200)]
    # Authenticated by the TLS client certificate being renewed, not by a password.
    assert records[1].client == f"cert:{old.subject.rfc4514_string()} serial={old.serial_number:x}"
    new = stored(device).certificate
    assert f"{new.serial_number:x}" == result["serial"]
    assert new.subject.public_bytes() == old.subject.public_bytes() and san(new) == san(old)
    assert spki(new) != spki(old), "rekey: the renewed certificate holds a new key"
    log = est_log(system)
    assert f"state: loaded certificate serial={old.serial_number:x}" in log
    assert f"TLS client auth: serial={old.serial_number:x}" in log
    # ssl needs the TLS client key in a file: it was written (encrypted) to the private work dir only
    # for the moment of loading it.
    assert sorted(p.name for p in files(device).iterdir()) == ["est-kek.bin", "est-state.sealed"]


# ------------------------------------------------------------------------------------ 202
def test_deferred_enrollment_waits_for_retry_after(boot, server, ta_files):
    server.update(defer=1, retry_after=1)
    ca_log = CaLog()
    logger = logging.getLogger("l4emu.est_ca")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(ca_log)
    try:
        system = boot(image(server.port, est_config(server.port), ["until=success"]), ta_files)
        result = run_client(system)
    finally:
        logger.removeHandler(ca_log)
        logger.setLevel(old_level)
    assert result["successes"] == 1 and result["cert_state"] == "VALID", system.console.text()
    enrolls = [(t, line) for t, line in ca_log.entries if "simpleenroll" in line]
    assert [line.rsplit("-> ", 1)[1].split()[0] for _, line in enrolls] == ["202", "200"]
    assert enrolls[1][0] - enrolls[0][0] >= 0.9, "the request was resent before Retry-After"
    # The client kept getting answers while est_service waited out the 202.
    assert "DEFERRED" in result["activities_seen"]
    assert "deferred by the server (202, Retry-After 1s)" in est_log(system)


# ------------------------------------------------------------------------------------ refusals
def test_wrong_password_is_a_clear_401_and_no_certificate(boot, server, ta_files):
    cfg = est_config(server.port, auth={"username": "estuser", "password": "wrong"})
    system = boot(image(server.port, cfg, ["until=failure"]), ta_files)
    result = run_client(system)
    assert result["error_code"] == AUTH_REFUSED and result["http_status"] == 401
    assert "refused our credentials (user estuser)" in result["detail"]
    assert result["cert_state"] == "NONE" and result["get_cert"] == "NO_CERTIFICATE"
    assert "simpleenroll FAILED: AUTH_REFUSED (HTTP 401)" in est_log(system)
    assert "wrong" not in est_log(system), "the password must not be logged"


def test_wrong_trust_anchor_refuses_the_server(boot, server, tmp_path):
    stranger = EstCa(tmp_path / "stranger")  # a CA the EST server has nothing to do with
    first = len(server.records)
    system = boot(image(server.port, est_config(server.port), ["until=failure"]),
                  {"ta.pem": stranger.certificate_pem.decode()})
    result = run_client(system)
    assert result["error_code"] == ErrorKind.TLS_FAILED, result
    assert "certificate verify failed" in result["detail"]
    assert result["get_cert"] == "NO_CERTIFICATE"
    assert server.records[first:] == [], "no HTTP request may reach an unauthenticated server"
    assert "cacerts FAILED: TLS_FAILED" in est_log(system)


def test_endpoint_outside_the_image_is_denied_by_the_proxy(boot, server, ta_files):
    system = boot(image(server.port, est_config(server.port), ["until=failure"], allowed_port=server.port + 1),
                  ta_files)
    result = run_client(system)
    assert result["error_code"] == ErrorKind.CONNECT_FAILED and "DENIED" in result["detail"], result
    assert any("DENIED (not in the image)" in line for line in system.lines("proxy"))


# ------------------------------------------------------------------------------------ bad answers
FAULTS = [
    (Fault.MALFORMED_PKCS7, ErrorKind.MALFORMED_PKCS7),
    (Fault.WRONG_CONTENT_TYPE, ErrorKind.WRONG_CONTENT_TYPE),
    (Fault.PEM_ARMOUR, ErrorKind.PEM_ARMOUR),
    (Fault.ROGUE_ISSUER, ErrorKind.UNTRUSTED_CHAIN),
    (Fault.CLOSE_MID_RESPONSE, ErrorKind.CONNECTION_CLOSED),
    (Fault.HANG, ErrorKind.TIMEOUT),
]


@pytest.mark.parametrize(("fault", "kind"), FAULTS, ids=[f.name for f, _ in FAULTS])
def test_bad_reenrollment_answer_keeps_the_certificate(boot, server, device, ta_files, fault, kind):
    old = stored(device).certificate
    server.update(fault=fault)
    # A short timeout only where the server is meant to hang (elsewhere it would only add flakiness).
    cfg = est_config(server.port, renew_at_fraction=1e-6, timeout_s=1.0 if fault is Fault.HANG else 30)
    system = boot(image(server.port, cfg, ["until=failure"]), ta_files)
    result = run_client(system)
    serial = f"{old.serial_number:x}"
    assert result["error_code"] == kind, result
    assert result["detail"].startswith(kind.name), result["detail"]
    # The previously enrolled certificate stays: served, and stored.
    assert result["cert_state"] == "VALID" and result["serial"] == serial and result["successes"] == 0
    assert stored(device).certificate == old
    assert f"simplereenroll FAILED: {kind.name}" in est_log(system)
    assert f"keeping certificate serial={serial}" in est_log(system)
    assert result["next_attempt"] > 0 and result["failures"] >= 1


# ------------------------------------------------------------------------------------ no network
def test_task_without_a_proxy_gate_cannot_reach_the_ca(boot, server):
    system = boot(textwrap.dedent(f"""
        name: est-nonet
        run: {{until: [client]}}
        tasks:
          client:
            program: testing.est_client
            args: ["direct=127.0.0.1:{server.port}"]
    """))
    result = run_client(system)
    assert result["has_net_cap"] is False
    if not result["confined"]:
        pytest.skip("OS-level network isolation of tasks (tasks/runtime/confine.py) is not active in the "
                    "boot fixture yet (no 'confine' in the boot record): a task process can still open "
                    f"sockets ({result['direct_connect']})")
    assert result["direct_connect"].startswith("failed"), result


# ------------------------------------------------------------------------------------ identity
def test_a_device_cannot_enroll_under_the_servers_name(boot, server, ta_files):
    cfg = est_config(server.port, subject={"CN": "l4emu EST server"}, sans=["ip:127.0.0.1", "dns:localhost"])
    first = len(server.records)
    system = boot(image(server.port, cfg, ["until=failure"]), ta_files)
    result = run_client(system)
    assert result["http_status"] == 400 and "cannot name the EST server" in result["detail"], result
    assert result["get_cert"] == "NO_CERTIFICATE"
    assert [(r.path.rsplit("/", 1)[1], r.status) for r in server.records[first:]] == [
        ("cacerts", 200), ("simpleenroll", 400)]


# ------------------------------------------------------------------------------------ rotation
# Last in the module: it moves the module's CA to a new issuing CA.
def test_device_renews_through_a_rotated_issuing_ca(boot, server, device, ta_files, ca):
    old = stored(device).certificate
    old.verify_directly_issued_by(ca.issuing)
    new_issuing = ca.rotate_issuing()
    first = len(server.records)
    system = boot(image(server.port, est_config(server.port, renew_at_fraction=1e-6), ["until=success"]),
                  ta_files)
    result = run_client(system)
    assert result["successes"] == 1 and result["serial"] != f"{old.serial_number:x}", system.console.text()
    # The renewal schedule fetched /cacerts first: the new issuing CA came from there (the enroll
    # answer holds only the new certificate, RFC 7030 §4.2.3).
    assert [(r.path.rsplit("/", 1)[1], r.status) for r in server.records[first:]] == [
        ("cacerts", 200), ("simplereenroll", 200)]
    new = stored(device).certificate
    new.verify_directly_issued_by(new_issuing)
    assert result["chain_sha256"] == [hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest()
                                      for c in (new, new_issuing, ca.certificate)]
    assert set(stored(device).ca_certs) == {new_issuing, ca.certificate}
    log = est_log(system)
    assert "cacerts (before simplereenroll): now 2 CA certificate(s)" in log
    assert f"issuer={new_issuing.subject.rfc4514_string()}" in log
