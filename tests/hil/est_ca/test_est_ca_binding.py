"""One place says which EST server an image uses, and `l4emu boot --est-ca/--est-server` agrees.

The rewritten image (`binding.rebind`) must point est_service, the network proxy and the trust
anchor module at the same server; `bind` starts the development CA with the image's own
credentials. The last test boots WvdS against a CA that `bind` started on another port.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest
import yaml

from hil.est_ca.binding import (
    EstBindingError,
    EstTarget,
    add_boot_options,
    bind,
    est_target_from_args,
    image_endpoints,
    parse_server,
    rebind,
)
from kernel_model.host.console import RecordingConsole
from kernel_model.host.images import PROJECT_ROOT, load_image
from kernel_model.host.supervisor import Supervisor
from systemlib import System

WVDS = PROJECT_ROOT / "images" / "wvds.yaml"


def wvds() -> dict:
    return yaml.safe_load(WVDS.read_text())


def test_the_wvds_image_names_its_est_server_once():
    text = WVDS.read_text()
    assert text.count("8443") == 1, "the EST endpoint must be one value (the &est_server anchor)"
    doc = wvds()
    assert image_endpoints(doc) == ["127.0.0.1:8443"]
    assert doc["tasks"]["netproxy"]["network"]["connect"] == ["127.0.0.1:8443"]


@pytest.mark.parametrize(("text", "endpoint", "host", "label"), [
    ("est.example.com:8443", "est.example.com:8443", None, None),
    ("https://est.example.com", "est.example.com:443", "est.example.com", None),
    ("https://est.example.com:9443/.well-known/est", "est.example.com:9443", "est.example.com", None),
    ("https://est.example.com/.well-known/est/arbitraryLabel1/", "est.example.com:443", "est.example.com",
     "arbitraryLabel1"),
    ("https://[::1]:8443/.well-known/est", "[::1]:8443", "::1", None),
])
def test_parse_server(text, endpoint, host, label):
    target = parse_server(text)
    assert (target.endpoint, target.host, target.label) == (endpoint, host, label)


@pytest.mark.parametrize(("text", "why"), [
    ("est.example.com", "HOST:PORT"), ("http://est.example.com", "https"),
    ("https://u:p@est.example.com", "--est-password-file"), ("https://est.example.com/est", "must be"),
    ("https://est.example.com/.well-known/est/a/b", "must be"), ("est:99999", "HOST:PORT"),
])
def test_parse_server_errors(text, why):
    with pytest.raises(EstBindingError, match=why):
        parse_server(text)


def test_rebind_points_everything_at_one_server(tmp_path):
    ta = tmp_path / "ta.pem"
    ta.write_text("pem")
    target = EstTarget("est.example.com:443", "est.example.com", "gw", True, ta, "alice", "s3cret")
    before = WVDS.read_text()
    bound = rebind(wvds(), WVDS.parent, target)
    est = bound["tasks"]["est"]["config"]
    assert est["server"] == {"endpoint": "est.example.com:443", "host": "est.example.com", "label": "gw"}
    assert est["auth"] == {"username": "alice", "password": "s3cret"}
    assert bound["tasks"]["netproxy"]["network"]["connect"] == ["est.example.com:443"]
    assert bound["modules"]["est-ta"] == str(ta.resolve())
    assert bound["modules"]["crypto-config"] == str((WVDS.parent / "wvds" / "crypto_config.json").resolve())
    assert WVDS.read_text() == before, "the image file is never modified"
    # Only what was asked for changes: no target, no change but absolute module paths.
    same = rebind(wvds(), WVDS.parent, EstTarget())
    assert same["tasks"]["est"]["config"] == wvds()["tasks"]["est"]["config"]
    with pytest.raises(EstBindingError, match="no est_service task"):
        rebind({"tasks": {"hello": {"program": "hello"}}}, WVDS.parent, target)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_boot_options(parser)
    return parser.parse_args(list(argv))


def test_cli_options(tmp_path):
    assert parse().est_ca is None and est_target_from_args(parse()) is None
    assert parse("--est-ca").est_ca == "" and parse("--est-ca", "127.0.0.1:9").est_ca == "127.0.0.1:9"
    password = tmp_path / "pw"
    password.write_text("hunter2\n")
    ta = tmp_path / "ta.pem"
    ta.write_text("pem")
    target = est_target_from_args(parse("--est-server", "https://est.lab/.well-known/est/x", "--est-ta", str(ta),
                                        "--est-user", "bob", "--est-password-file", str(password)))
    assert target == EstTarget("est.lab:443", "est.lab", "x", True, ta, "bob", "hunter2")
    for argv, why in [(("--est-ca", "--est-ta", str(ta)), "--est-ta goes with --est-server"),
                      (("--est-user", "bob"), "go together"),
                      (("--est-server", "h:1", "--est-ta", str(tmp_path / "missing")), "not a file")]:
        with pytest.raises(EstBindingError, match=why):
            est_target_from_args(parse(*argv))
    with pytest.raises(SystemExit):
        parse("--est-ca", "--est-server", "h:1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def enrolled(system: System) -> bool:
    return any("device certificate: subject CN=gateway-0001" in line for line in system.lines("gateway"))


def test_est_ca_on_another_port_and_the_image_agree(tmp_path):
    """`l4emu boot images/wvds.yaml --est-ca 127.0.0.1:PORT`: the CA, the proxy's allowed endpoint,
    est_service's server and its trust anchor all agree, and the gateway gets its certificate."""
    port = free_port()
    lines: list[str] = []
    with bind(WVDS, est_ca=f"127.0.0.1:{port}", state_dir=tmp_path / "est-ca", announce=lines.append) as path:
        bound = yaml.safe_load(Path(path).read_text())
        assert image_endpoints(bound) == [f"127.0.0.1:{port}"]
        assert bound["tasks"]["netproxy"]["network"]["connect"] == [f"127.0.0.1:{port}"]
        assert bound["modules"]["est-ta"] == str((tmp_path / "est-ca" / "ca.crt").resolve())
        assert lines[0].startswith(f"development EST CA at https://127.0.0.1:{port}/.well-known/est")
        assert "HTTP Basic user estuser from the image" in lines[0]
        console = RecordingConsole()
        sup = Supervisor(load_image(path), console, run_dir=tmp_path / "run")
        system = System(sup, console)
        try:
            sup.start()  # WvdS runs until stopped (the sensor feeds the gateway): run until it has its certificate
            system.run(timeout=120, until=lambda: enrolled(system))
        finally:
            sup.shutdown()
    assert enrolled(system), console.text()
    assert not Path(path).exists(), "the rewritten image is temporary"


def test_est_server_points_wvds_at_another_rfc7030_server(tmp_path):
    """`--est-server URL --est-ta --est-user --est-password-file`: a server with a CA label and
    its own credentials, none of which the image knows; the image file stays as it is."""
    from hil.est_ca import EstCa, ServerOptions, serve

    ca = EstCa(tmp_path / "other-ca")
    password = tmp_path / "password.txt"
    password.write_text("not-the-image-password\n")
    options = ServerOptions(basic_auth=("gw-0001", "not-the-image-password"), labels=frozenset({"gw"}))
    with serve(ca, "127.0.0.1", 0, options) as running:
        target = est_target_from_args(parse(
            "--est-server", f"https://127.0.0.1:{running.port}/.well-known/est/gw", "--est-ta",
            str(ca.ca_cert_path), "--est-user", "gw-0001", "--est-password-file", str(password)))
        with bind(WVDS, target=target, state_dir=tmp_path / "unused", announce=lambda line: None) as path:
            console = RecordingConsole()
            sup = Supervisor(load_image(path), console, run_dir=tmp_path / "run")
            system = System(sup, console)
            try:
                sup.start()
                system.run(timeout=120, until=lambda: enrolled(system))
            finally:
                sup.shutdown()
            assert enrolled(system), console.text()
        records = [(r.path, r.status, r.client) for r in running.records]
    assert records[:2] == [("/.well-known/est/gw/cacerts", 200, "anonymous"),
                           ("/.well-known/est/gw/simpleenroll", 200, "basic:gw-0001")], records
    assert not (tmp_path / "unused").exists(), "--est-server starts no CA"
