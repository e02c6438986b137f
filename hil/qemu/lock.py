"""The guest's lock file (``hil/qemu/lock.json``): every input of the image, pinned and hashed.

The lock names the kernel (package, version, release), every Debian .deb (package,
architecture, version, file name, sha256 from the archive's index) and every wheel (name,
version, file name, sha256 of the file from PyPI), and ``source_date_epoch``, the timestamp
every archive entry carries. ``l4emu hil build`` downloads exactly these files, checks each
one's sha256 whenever it is used (a cached file is never trusted by its name), and fails
with the command that renews the lock when the archive no longer serves a pinned version
(Debian's mirrors keep only the current version of a stable release's packages; older ones
live on snapshot.debian.org, see https://snapshot.debian.org/).

``l4emu hil lock`` writes a new lock: the candidate versions of the package index (after
``apt-get update``) and, for the wheels, the versions installed in this environment, so the
guest runs what the host tests run.

Pure: parsing, checking and rendering; the I/O is in ``fetch.py``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hil.qemu.errors import HarnessError

LOCK_PATH = Path(__file__).with_name("lock.json")
LOCK_FORMAT = 1
UPDATE_COMMAND = "l4emu hil lock && l4emu hil build"
UPDATE_HINT = (f"renew the lock with `{UPDATE_COMMAND}` (as root, after hil/qemu/setup.sh, which runs "
               f"`apt-get update`) and commit hil/qemu/lock.json")


@dataclass(frozen=True)
class Deb:
    package: str
    arch: str  # "arm64" or "all"
    version: str
    filename: str
    sha256: str

    @property
    def spec(self) -> str:
        """What ``apt-get download`` takes: ``pkg:arch=version``."""
        return f"{self.package}:{self.arch}={self.version}"


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        """A hash-checking pip requirement line (pip's "Secure installs" / ``--require-hashes``)."""
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


@dataclass(frozen=True)
class Kernel:
    package: str  # linux-image-6.1.0-57-cloud-arm64
    version: str  # 6.1.192-3
    release: str  # 6.1.0-57-cloud-arm64 (uname -r in the guest)


@dataclass(frozen=True)
class Lock:
    kernel: Kernel
    debs: tuple[Deb, ...]  # the kernel's .deb first
    wheels: tuple[Wheel, ...]
    source_date_epoch: int

    def to_json(self) -> str:
        doc = {
            "format": LOCK_FORMAT,
            "comment": "Inputs of the HIL guest image, pinned and hashed. Written by `l4emu hil lock`; "
                       "read by `l4emu hil build`. See docs/hil.md.",
            "source_date_epoch": self.source_date_epoch,
            "kernel": asdict(self.kernel),
            "debs": [asdict(d) for d in self.debs],
            "wheels": [asdict(w) for w in self.wheels],
        }
        return json.dumps(doc, indent=1) + "\n"

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def deb(self, package: str) -> Deb:
        for d in self.debs:
            if d.package == package:
                return d
        raise KeyError(package)


def _fail(path: Path, where: str, what: str) -> HarnessError:
    return HarnessError("lock-invalid", f"{path}: {where}: {what}", hint=UPDATE_HINT)


def _fields(path: Path, where: str, obj: object, names: tuple[str, ...]) -> dict:
    if not isinstance(obj, dict):
        raise _fail(path, where, "expected an object")
    for name in names:
        value = obj.get(name)
        if not isinstance(value, str) or not value:
            raise _fail(path, f"{where}.{name}", "expected a non-empty string")
    if "sha256" in names and not (len(obj["sha256"]) == 64 and all(c in "0123456789abcdef" for c in obj["sha256"])):
        raise _fail(path, f"{where}.sha256", "expected 64 lowercase hex digits")
    return {n: obj[n] for n in names}


def parse(text: str, path: Path = LOCK_PATH) -> Lock:
    """A lock from its JSON text; every problem names the file and the field."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise _fail(path, f"line {getattr(exc, 'lineno', '?')}", f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != LOCK_FORMAT:
        raise _fail(path, "format", f"expected {LOCK_FORMAT}")
    epoch = doc.get("source_date_epoch")
    if not isinstance(epoch, int) or epoch < 0:
        raise _fail(path, "source_date_epoch", "expected a non-negative integer")
    kernel = Kernel(**_fields(path, "kernel", doc.get("kernel"), ("package", "version", "release")))
    debs = tuple(Deb(**_fields(path, f"debs[{i}]", d, ("package", "arch", "version", "filename", "sha256")))
                 for i, d in enumerate(doc.get("debs") or []))
    wheels = tuple(Wheel(**_fields(path, f"wheels[{i}]", w, ("name", "version", "filename", "sha256")))
                   for i, w in enumerate(doc.get("wheels") or []))
    if not debs or debs[0].package != kernel.package:
        raise _fail(path, "debs[0]", f"expected the kernel package {kernel.package}")
    return Lock(kernel, debs, wheels, epoch)


def load(path: Path = LOCK_PATH) -> Lock:
    try:
        text = path.read_text()
    except OSError as exc:
        raise HarnessError("lock-missing", f"cannot read the lock file {path}: {exc.strerror}",
                           hint=UPDATE_HINT) from None
    return parse(text, path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, sha256: str) -> bool:
    """True if ``path`` exists and hashes to ``sha256``."""
    return path.is_file() and sha256_file(path) == sha256
