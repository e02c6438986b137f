"""Where the guest image's inputs come from, and the download cache that keeps a second build fast.

Every input is pinned in ``hil/qemu/lock.json`` (``lock.py``): the build asks for exactly
those files and checks each one's sha256 whenever it uses it.

- Debian arm64 ``.deb`` files: ``apt-get download pkg:arch=version`` into ``cache/debs``.
- Wheels (aarch64 for compiled code, ``py3-none-any`` for pure Python):
  ``pip download --require-hashes`` into ``cache/wheels``.
- ``resolve_debs``/``resolve_wheels`` pick the versions for a new lock (``l4emu hil lock``):
  the package index's candidates (one ``apt-cache show`` for all of them) and the wheels of
  the versions installed on the host, so the guest runs the code the host tests.

Only Debian's mirror and PyPI are contacted, and only for what the cache lacks. Nothing
arm64 is executed: ``.deb`` files are read with ``dpkg-deb``.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

from hil.qemu import lock
from hil.qemu.errors import HarnessError

SETUP_HINT = "run hil/qemu/setup.sh as root (adds the arm64 architecture, installs qemu-system-arm)"
WHEEL_PLATFORMS = ("manylinux_2_34_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64",
                   "manylinux2014_aarch64", "any")  # the guest's glibc is 2.36
GUEST_PYTHON = {"python_version": "3.11", "python_full_version": "3.11.2", "platform_machine": "aarch64",
                "platform_python_implementation": "CPython", "implementation_name": "cpython",
                "sys_platform": "linux", "os_name": "posix", "platform_system": "Linux"}

Log = Callable[[str], None]


def run_tool(argv: list[str], reference: str, *, cwd: Path | None = None, hint: str | None = None) -> str:
    """Run a host tool; a non-zero exit becomes ``HarnessError(reference)`` with its last output lines."""
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(reference, f"`{' '.join(argv[:4])} ...` exited with status {proc.returncode}",
                           context=(proc.stderr or proc.stdout).splitlines()[-20:], hint=hint)
    return proc.stdout


def require_tools(tools: Iterable[str] = ("apt-get", "apt-cache", "dpkg-deb", "readelf")) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise HarnessError("build-tools-missing", f"missing host tools: {', '.join(missing)}", hint=SETUP_HINT)


# ----------------------------------------------------------------------------- Debian
def parse_stanzas(text: str) -> dict[str, dict[str, str]]:
    """``apt-cache show`` output, keyed ``package:arch`` (``:all`` for architecture-independent ones)."""
    result: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+): (.*)$", stanza, re.M))
        if "Package" in fields:
            result.setdefault(f"{fields['Package']}:{fields['Architecture']}", fields)
    return result


def deb_filename(fields: dict[str, str]) -> str:
    """The file name `apt-get download` gives a package version (an epoch's ':' becomes %3a)."""
    return f"{fields['Package']}_{fields['Version'].replace(':', '%3a')}_{fields['Architecture']}.deb"


def _candidates(specs: list[str]) -> dict[str, dict[str, str]]:
    out = run_tool(["apt-cache", "show", "--no-all-versions", *specs], "arm64-index-missing", hint=SETUP_HINT)
    return parse_stanzas(out)


def kernel_package(meta: str) -> str:
    """The versioned kernel package an arm64 metapackage (e.g. linux-image-cloud-arm64) points at."""
    fields = _candidates([f"{meta}:arm64"]).get(f"{meta}:arm64", {})
    m = re.search(r"(linux-image-[^\s,:(]+)", fields.get("Depends", ""))
    if not m:
        raise HarnessError("kernel-package-unresolved", f"{meta}:arm64 depends on no linux-image package",
                           hint=SETUP_HINT)
    return m.group(1)


def ensure_debs(debs: list[lock.Deb], cache: Path, log: Log) -> list[Path]:
    """Exactly the locked .debs in ``cache``, each one's sha256 checked now (cached or not).

    A cached file that does not match is fetched again; a version the archive no longer
    serves fails with the command that renews the lock.
    """
    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / d.filename for d in debs]
    missing = [d for d, p in zip(debs, paths, strict=True) if not lock.verify(p, d.sha256)]
    if missing:
        for d in missing:
            (cache / d.filename).unlink(missing_ok=True)
        log(f"downloading {len(missing)} .deb(s): {' '.join(d.spec for d in missing)}")
        proc = subprocess.run(["apt-get", "download", *(d.spec for d in missing)], cwd=cache,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            gone = re.findall(r"Version '([^']+)' for '([^']+)' was not found", proc.stderr)
            if gone:
                raise HarnessError("lock-version-gone",
                                   "the package archive no longer serves pinned version(s): "
                                   + ", ".join(f"{pkg}={ver}" for ver, pkg in gone),
                                   context=proc.stderr.splitlines()[-10:], hint=lock.UPDATE_HINT)
            raise HarnessError("deb-download-failed", f"apt-get download exited with status {proc.returncode}",
                               context=proc.stderr.splitlines()[-20:],
                               hint="only Debian's mirror is needed; run hil/qemu/setup.sh (apt-get update)")
    for d, path in zip(debs, paths, strict=True):
        if not path.is_file():
            raise HarnessError("deb-download-failed", f"apt-get download did not produce {path.name}")
        actual = lock.sha256_file(path)
        if actual != d.sha256:
            path.unlink()
            raise HarnessError("deb-hash-mismatch", f"{d.filename}: sha256 {actual}, the lock says {d.sha256}",
                               hint="the archive serves different bytes under a pinned version; " + lock.UPDATE_HINT)
    return paths


def extract(deb: Path, members: Callable[[str], Path | None]) -> int:
    """Stream ``deb``'s regular files through ``members(name) -> destination or None``; returns the count written."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    written = 0
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            dest = members(member.name.removeprefix("./")) if member.isfile() else None
            if dest is not None:
                dest.parent.mkdir(parents=True, exist_ok=True)
                src_file = tar.extractfile(member)
                assert src_file is not None  # a regular file
                with src_file as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
                dest.chmod(member.mode & 0o7777)
                written += 1
    if proc.wait() != 0:
        raise HarnessError("deb-unpack-failed", f"dpkg-deb --fsys-tarfile {deb.name} failed")
    return written


# ----------------------------------------------------------------------------- Python
def pip_download_argv(dest: Path) -> list[str]:
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
            "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3",
            "--abi", "none", "-d", str(dest)]
    for platform in WHEEL_PLATFORMS:
        argv += ["--platform", platform]
    return argv


def ensure_wheels(wheels: list[lock.Wheel], cache: Path, log: Log) -> list[Path]:
    """Exactly the locked wheels in ``cache``; pip checks the hashes (``--require-hashes``) and so do we, every time."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / w.filename for w in wheels]
    missing = [w for w, p in zip(wheels, paths, strict=True) if not lock.verify(p, w.sha256)]
    if missing:
        for w in missing:
            (cache / w.filename).unlink(missing_ok=True)
        log(f"downloading wheels: {' '.join(f'{w.name}=={w.version}' for w in missing)}")
        req = cache / "requirements.lock.txt"
        req.write_text("".join(w.requirement + "\n" for w in missing))
        run_tool(pip_download_argv(cache) + ["--require-hashes", "-r", str(req)], "wheel-download-failed",
                 hint="PyPI must be reachable for the first build; a version PyPI no longer serves: "
                      + lock.UPDATE_HINT)
    for w, path in zip(wheels, paths, strict=True):
        if not path.is_file():
            raise HarnessError("wheel-download-failed", f"pip did not produce {w.filename}",
                               hint="the lock names a file for another platform? " + lock.UPDATE_HINT)
        actual = lock.sha256_file(path)
        if actual != w.sha256:
            path.unlink()
            raise HarnessError("wheel-hash-mismatch", f"{w.filename}: sha256 {actual}, the lock says {w.sha256}",
                               hint=lock.UPDATE_HINT)
    return paths


def resolve_debs(specs: list[str]) -> list[lock.Deb]:
    """The index's candidate version of each ``pkg:arch`` (``pkg`` alone: ``all``), with its sha256."""
    found = _candidates(specs)
    debs = []
    for spec in specs:
        fields = found.get(spec if ":" in spec else f"{spec}:all")
        if fields is None or "SHA256" not in fields:
            raise HarnessError("deb-not-found", f"apt knows no candidate for {spec}", hint=SETUP_HINT)
        debs.append(lock.Deb(fields["Package"], fields["Architecture"], fields["Version"], deb_filename(fields),
                             fields["SHA256"]))
    return debs


def resolve_wheels(names: Iterable[str], scratch: Path, log: Log) -> list[lock.Wheel]:
    """Each distribution at this environment's installed version, as the aarch64/any wheel PyPI serves."""
    pins = {name: md.version(name) for name in names}
    scratch.mkdir(parents=True, exist_ok=True)
    log(f"resolving wheels: {' '.join(f'{n}=={v}' for n, v in pins.items())}")
    run_tool(pip_download_argv(scratch) + [f"{n}=={v}" for n, v in pins.items()], "wheel-download-failed",
             hint="PyPI must be reachable to write the lock")
    wheels = []
    for name, version in pins.items():
        stem = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"
        found = [w for w in sorted(scratch.glob("*.whl")) if w.name.lower().startswith(stem)]
        if len(found) != 1:
            raise HarnessError("wheel-download-failed", f"expected one wheel for {name}=={version}, got {found}")
        wheels.append(lock.Wheel(name, version, found[0].name, lock.sha256_file(found[0])))
    return wheels


def copy_distribution(name: str, site: Path) -> int:
    """Copy an installed (pure-Python) distribution's files, per its RECORD, into ``site``."""
    dist = md.distribution(name)
    count = 0
    for file in dist.files or []:
        if file.parts[0] == ".." or "__pycache__" in file.parts or file.suffix == ".pyc":
            continue  # console scripts live outside site-packages; bytecode is compiled for the guest
        dest = site / file
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(str(dist.locate_file(file)), dest)
        count += 1
    return count


def marker_applies(marker: str, env: dict[str, str] = GUEST_PYTHON) -> bool:
    """Does a PEP 508 environment marker hold in the guest (``packaging.markers``; no extras are
    installed there)? A marker it cannot read applies: a requirement is rather shipped than dropped."""
    from packaging.markers import InvalidMarker, Marker, UndefinedEnvironmentName

    try:
        return Marker(marker).evaluate({**env, "extra": ""})
    except (InvalidMarker, UndefinedEnvironmentName):
        return True


def normal_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def unshipped_requirements(dists: Iterable[str], shipped: Iterable[str]) -> list[str]:
    """``"<dist> needs <name>"`` for each runtime requirement of ``dists`` that is not ``shipped``."""
    have = {normal_name(n) for n in shipped}
    missing = []
    for dist in dists:
        for req in md.requires(dist) or []:
            spec, _, marker = req.partition(";")
            m = re.match(r"\s*([A-Za-z0-9._-]+)", spec)
            name = normal_name(m.group(1)) if m else spec
            if name not in have and (not marker or marker_applies(marker)):
                missing.append(f"{dist} needs {name}")
    return missing
