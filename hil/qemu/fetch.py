"""Where the guest image's inputs come from, and the download cache that keeps a second build fast.

- Debian arm64 ``.deb`` files: the candidate version of each package (one ``apt-cache show``
  for all of them, since every call costs about a second), fetched with ``apt-get
  download`` into ``cache/debs`` only if that exact version is not there yet.
- aarch64 wheels for the distributions with compiled code, pinned to the host's versions
  (hil-guest.md G18), fetched with ``pip download`` into ``cache/wheels``.
- Pure-Python distributions are copied from the host environment, file by file from their
  RECORD, so the guest runs the very versions the host tests.

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

from hil.qemu.errors import HarnessError

SETUP_HINT = "run hil/qemu/setup.sh as root (adds the arm64 architecture, installs qemu-system-arm)"
WHEEL_PLATFORMS = ("manylinux_2_34_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64",
                   "manylinux2014_aarch64")  # the guest's glibc is 2.36
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
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
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


def ensure_debs(specs: list[str], cache: Path, log: Log) -> list[Path]:
    """The candidate version of each ``pkg:arch`` spec (``pkg`` alone: arch ``all``), in ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    found = _candidates(specs)
    paths = []
    for spec in specs:
        fields = found.get(spec if ":" in spec else f"{spec}:all")
        if fields is None:
            raise HarnessError("deb-not-found", f"apt knows no candidate for {spec}", hint=SETUP_HINT)
        paths.append(cache / deb_filename(fields))
    missing = [spec for spec, path in zip(specs, paths) if not path.is_file()]
    if missing:
        log(f"downloading {len(missing)} .deb(s): {' '.join(missing)}")
        run_tool(["apt-get", "download", *missing], "deb-download-failed", cwd=cache,
                 hint="only Debian's mirror is needed; check that `apt-get update` works")
    for path in paths:
        if not path.is_file():
            raise HarnessError("deb-download-failed", f"apt-get download did not produce {path.name}")
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
                with tar.extractfile(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
                dest.chmod(member.mode & 0o7777)
                written += 1
    if proc.wait() != 0:
        raise HarnessError("deb-unpack-failed", f"dpkg-deb --fsys-tarfile {deb.name} failed")
    return written


# ----------------------------------------------------------------------------- Python
def ensure_wheels(names: Iterable[str], cache: Path, log: Log) -> list[Path]:
    """An aarch64 CPython 3.11 wheel of each distribution, at the host's installed version."""
    cache.mkdir(parents=True, exist_ok=True)
    pins = {name: md.version(name) for name in names}

    def cached(name: str, version: str) -> Path | None:
        stem = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"
        return next((w for w in sorted(cache.glob("*.whl"))
                     if w.name.lower().startswith(stem) and "aarch64" in w.name), None)

    missing = [f"{n}=={v}" for n, v in pins.items() if cached(n, v) is None]
    if missing:
        log(f"downloading aarch64 wheels: {' '.join(missing)}")
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
                "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3",
                "--abi", "none", "-d", str(cache)]
        for platform in WHEEL_PLATFORMS:
            argv += ["--platform", platform]
        run_tool(argv + missing, "wheel-download-failed", hint="PyPI must be reachable for the first build")
    wheels = [cached(n, v) for n, v in pins.items()]
    if any(w is None for w in wheels):
        raise HarnessError("wheel-download-failed", f"pip downloaded no aarch64 wheel for one of {missing}")
    return wheels  # type: ignore[return-value]


def copy_distribution(name: str, site: Path) -> int:
    """Copy an installed (pure-Python) distribution's files, per its RECORD, into ``site``."""
    dist = md.distribution(name)
    count = 0
    for file in dist.files or []:
        if file.parts[0] == ".." or "__pycache__" in file.parts or file.suffix == ".pyc":
            continue  # console scripts live outside site-packages; bytecode is compiled for the guest
        dest = site / file
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dist.locate_file(file), dest)
        count += 1
    return count


def marker_applies(marker: str, env: dict[str, str] = GUEST_PYTHON) -> bool:
    """A small PEP 508 marker check for the guest: clauses joined by ``and``/``or``, no parentheses.

    ``extra == ...`` never applies (no extras are installed); a clause it cannot read
    applies, so a requirement is rather shipped than silently dropped.
    """
    def clause(text: str) -> bool:
        m = re.fullmatch(r"\s*(\w+)\s*(==|!=|<=|>=|<|>)\s*['\"]([^'\"]*)['\"]\s*", text)
        if not m:
            return True
        var, op, value = m.groups()
        if var == "extra":
            return False
        if var not in env:
            return True
        have: object = env[var]
        want: object = value
        if var.startswith("python"):
            have, want = tuple(map(int, env[var].split("."))), tuple(map(int, value.split(".")))
        return {"==": have == want, "!=": have != want, "<": have < want, "<=": have <= want,  # type: ignore
                ">": have > want, ">=": have >= want}[op]  # type: ignore

    return any(all(clause(c) for c in alt.split(" and ")) for alt in marker.split(" or "))


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
