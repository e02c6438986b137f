"""Which EST server an image uses: one value in the image, and a CLI that agrees with it.

An image names its EST server in one place: the est_service task's ``server.endpoint``
(``host:port``). The network proxy must be allowed to reach it (``network.connect``); in
images/wvds.yaml both are the same YAML anchor (``&est_server``), so there is one value to edit.

``l4emu boot`` can point the image elsewhere without editing it (`bind`):

* ``--est-ca [HOST:PORT]`` starts the development CA (``hil.est_ca``, state in var/est-ca) at
  HOST:PORT -- by default the image's own endpoint -- with the image's HTTP Basic credentials,
  and boots the image with that endpoint and the CA's trust anchor (var/est-ca/ca.crt);
* ``--est-server URL`` points the image at any RFC 7030 server:
  ``https://est.example.com[:port][/.well-known/est[/label]]`` or ``host:port``, with
  ``--est-ta FILE`` (the bootstrap trust anchor, PEM) and ``--est-user USER`` +
  ``--est-password-file FILE`` (HTTP Basic for the first enrollment), each overriding the
  image's value.

Either way the booted image is a rewritten copy (`rebind`): every est_service task gets the new
endpoint, TLS name, label, credentials and trust-anchor module, and every ``network.connect``
entry that named the old endpoint names the new one -- the proxy, est_service, the CA and the
trust anchor cannot disagree. The copy lives in a temporary directory (module paths made
absolute) and is removed after the boot; the image file itself is never modified.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from .authority import EstCa
from .server import ServerOptions
from .serving import RunningServer, serve

__all__ = ["EstBindingError", "EstTarget", "add_boot_options", "bind", "est_target_from_args",
           "image_endpoints", "parse_server", "rebind", "start_dev_ca"]

EST_PROGRAM = "est_service.task"
WELL_KNOWN = "/.well-known/est"


class EstBindingError(ValueError):
    """The EST options and the image cannot be made to agree (nothing was started)."""


@dataclass(frozen=True, slots=True)
class EstTarget:
    """Where est_service should enroll. ``None`` fields keep the image's value."""

    endpoint: str | None = None        # host:port the proxy connects to
    host: str | None = None            # TLS name / Host header, if not the endpoint's host
    label: str | None = None           # CA label (RFC 7030 additional path segment)
    set_label: bool = False            # True: ``label`` replaces the image's (even with None)
    trust_anchor: Path | None = None   # PEM file with the bootstrap trust anchor(s)
    username: str | None = None
    password: str | None = None


def host_port(text: str, what: str, *, any_port: bool = False) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (``[v6]:PORT`` too); port 0 ("any free port") only with ``any_port``."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not (0 if any_port else 1) <= int(port) < 65536:
        raise EstBindingError(f"{what}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_server(text: str) -> EstTarget:
    """``host:port`` or ``https://host[:port][/.well-known/est[/label]]``."""
    if "://" not in text:
        host, port = host_port(text, "--est-server")
        return EstTarget(endpoint=_endpoint(host, port))
    url = urlsplit(text)
    if url.scheme != "https":
        raise EstBindingError(f"--est-server: EST runs over https, got {text!r}")
    if url.query or url.fragment or url.username or url.password:
        raise EstBindingError("--est-server: no query, fragment or user:password@ in the URL "
                              "(credentials: --est-user / --est-password-file)")
    hostname, port = url.hostname, url.port or 443
    if not hostname:
        raise EstBindingError(f"--est-server: no host in {text!r}")
    path = url.path.rstrip("/")
    label = None
    if path and path != WELL_KNOWN:
        if not path.startswith(WELL_KNOWN + "/") or "/" in path[len(WELL_KNOWN) + 1:]:
            raise EstBindingError(f"--est-server: the path must be {WELL_KNOWN}[/LABEL], got {url.path!r}")
        label = path[len(WELL_KNOWN) + 1:]
    return EstTarget(endpoint=_endpoint(hostname, port), host=hostname, label=label, set_label=True)


def _est_tasks(doc: dict) -> list[dict]:
    tasks = doc.get("tasks") or {}
    return [t for t in tasks.values() if isinstance(t, dict) and t.get("program") == EST_PROGRAM]


def image_endpoints(doc: dict) -> list[str]:
    """The EST endpoints the image's est_service tasks use (usually exactly one)."""
    found = []
    for task in _est_tasks(doc):
        endpoint = ((task.get("config") or {}).get("server") or {}).get("endpoint")
        if endpoint and endpoint not in found:
            found.append(str(endpoint))
    return found


def image_auth(doc: dict) -> tuple[str, str] | None:
    for task in _est_tasks(doc):
        auth = (task.get("config") or {}).get("auth")
        if auth:
            return str(auth["username"]), str(auth["password"])
    return None


def rebind(doc: dict, image_dir: Path, target: EstTarget) -> dict:
    """A copy of the image ``doc`` (from ``yaml.safe_load``) that uses ``target``."""
    doc = copy.deepcopy(doc)
    modules = doc.setdefault("modules", {}) or {}
    doc["modules"] = {name: str((image_dir / path).resolve()) for name, path in modules.items()}
    tasks = _est_tasks(doc)
    if not tasks:
        raise EstBindingError("the image has no est_service task to point at an EST server")
    old_endpoints = set(image_endpoints(doc))
    for task in tasks:
        config = task.setdefault("config", {})
        server = config.setdefault("server", {})
        if target.endpoint is not None:
            server["endpoint"] = target.endpoint
            server["host"] = target.host
        if target.set_label:
            server["label"] = target.label
        if target.username is not None:
            config["auth"] = {"username": target.username, "password": target.password or ""}
        if target.trust_anchor is not None:
            rom = str(config.get("trust_anchor_rom", "est-ta"))
            doc["modules"][rom] = str(target.trust_anchor.resolve())
    if target.endpoint is not None:
        for task in (doc.get("tasks") or {}).values():
            network = task.get("network") if isinstance(task, dict) else None
            if isinstance(network, dict) and network.get("connect"):
                connect = [target.endpoint if e in old_endpoints else e for e in network["connect"]]
                network["connect"] = list(dict.fromkeys(connect))
    return doc


def load_doc(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise EstBindingError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise EstBindingError(f"{path}: not an image")
    return doc


@contextlib.contextmanager
def start_dev_ca(host: str, port: int, *, state_dir: Path, auth: tuple[str, str] | None,
                 announce: Callable[[str], None] = print) -> Iterator[RunningServer]:
    """The development CA (state in ``state_dir``) serving at HOST:PORT with HTTP Basic ``auth``
    (``None``: off) -- what ``l4emu boot --est-ca`` and ``l4emu hil run --est-ca`` both start.
    Raises `EstCaError` when the CA cannot start (e.g. the port is taken)."""
    ca = EstCa(state_dir)
    with serve(ca, host, port, ServerOptions(basic_auth=auth)) as running:
        announce(f"development EST CA at {running.url} (trust anchor {ca.ca_cert_path}; HTTP Basic "
                 f"{'user ' + auth[0] + ' from the image' if auth else 'off'})")
        yield running


@contextlib.contextmanager
def bind(image: Path, *, est_ca: str | None = None, target: EstTarget | None = None,
         state_dir: Path, announce: Callable[[str], None] = print) -> Iterator[Path]:
    """Start what ``--est-ca`` asks for and yield the image path to boot (a rebound copy).

    ``est_ca`` is ``"HOST:PORT"`` or ``""`` for the image's own endpoint. Raises
    `EstBindingError` (nothing started) or `EstCaError` (the CA cannot start).
    """
    doc = load_doc(image)
    target = target or EstTarget()
    with contextlib.ExitStack() as stack:
        if est_ca is not None:
            endpoints = image_endpoints(doc)
            if not est_ca and len(endpoints) != 1:
                raise EstBindingError(f"--est-ca without HOST:PORT needs exactly one EST endpoint in "
                                      f"{image}, found {len(endpoints)}")
            host, port = host_port(est_ca or endpoints[0], "--est-ca")
            auth = image_auth(doc) if target.username is None else (target.username, target.password or "")
            running = stack.enter_context(start_dev_ca(host, port, state_dir=state_dir, auth=auth,
                                                       announce=announce))
            ca = running.ca
            target = EstTarget(endpoint=_endpoint(host, port), host=target.host, label=target.label,
                               set_label=target.set_label, trust_anchor=ca.ca_cert_path, username=target.username,
                               password=target.password)
        if not _est_tasks(doc):  # e.g. hello.yaml with --est-ca: only the CA is started
            yield image
            return
        bound = rebind(doc, image.parent, target)
        for endpoint in image_endpoints(bound):
            announce(f"EST server for {doc.get('name', image.stem)}: {endpoint}"
                     + (f" (label {target.label})" if target.label else ""))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="l4emu-est-")))
        path = tmp / image.name
        path.write_text(yaml.safe_dump(bound, sort_keys=False), encoding="utf-8")
        yield path


# ------------------------------------------------------------------------------ the CLI options
def add_boot_options(parser: argparse.ArgumentParser) -> None:
    """The EST options of ``l4emu boot`` (l4emu/cli.py calls this)."""
    group = parser.add_argument_group(
        "EST server", "which EST server the image's est_service enrolls with (default: the image's "
        "server.endpoint); the image file is not modified")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--est-ca", metavar="HOST:PORT", nargs="?", const="", default=None,
                       help="first start the development EST CA (state in var/est-ca) on this loopback address, "
                            "default the image's endpoint, with the image's HTTP Basic credentials; the image "
                            "boots with that endpoint and the CA's trust anchor var/est-ca/ca.crt")
    where.add_argument("--est-server", metavar="URL",
                       help="enroll with this RFC 7030 server instead: https://HOST[:PORT][/.well-known/est[/LABEL]] "
                            "or HOST:PORT (the network proxy is allowed exactly this endpoint)")
    group.add_argument("--est-ta", metavar="FILE", type=Path,
                       help="bootstrap trust anchor(s) of the EST server, PEM (default: the image's est-ta module)")
    group.add_argument("--est-user", metavar="USER",
                       help="HTTP Basic user for the first enrollment (default: the image's auth.username)")
    group.add_argument("--est-password-file", metavar="FILE", type=Path,
                       help="file holding the HTTP Basic password (first line); needs --est-user")


def est_target_from_args(args: argparse.Namespace) -> EstTarget | None:
    """The `EstTarget` the EST options ask for, or None. Raises `EstBindingError`."""
    server = getattr(args, "est_server", None)
    ta, user, password_file = args.est_ta, args.est_user, args.est_password_file
    if args.est_ca is not None and ta is not None:
        raise EstBindingError("--est-ta goes with --est-server: with --est-ca the trust anchor is the CA's own")
    if (user is None) != (password_file is None):
        raise EstBindingError("--est-user and --est-password-file go together")
    if server is None and ta is None and user is None:
        return None
    target = parse_server(server) if server else EstTarget()
    password = None
    if password_file is not None:
        try:
            lines = password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise EstBindingError(f"--est-password-file: {exc}") from None
        password = lines[0] if lines else ""
    if ta is not None and not ta.is_file():
        raise EstBindingError(f"--est-ta: {ta} is not a file")
    return EstTarget(target.endpoint, target.host, target.label, target.set_label, ta, user, password)
