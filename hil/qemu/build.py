"""Build the bootable aarch64 guest: a Debian arm64 kernel and an initramfs holding Python
3.11, the project's dependencies (wheels) and the project's own source.

Every input is pinned and hashed in ``hil/qemu/lock.json`` (``lock.py``); ``write_lock()``
renews it (``l4emu hil lock``). ``build(out_dir) -> Image`` builds the kernel and the base
archive from the lock, ``refresh(out_dir, dest)`` adds the project overlay (what every run
does, into its own directory, so concurrent runs never share a file they write). Nothing
arm64 runs on the host: .debs are unpacked with ``dpkg-deb -x`` (no maintainer scripts),
wheels are unzipped, and every ELF's NEEDED libraries are checked with ``readelf -d`` before
the guest ever boots.

The archives are reproducible (https://reproducible-builds.org/docs/archives/): entries in
sorted order, every timestamp ``SOURCE_DATE_EPOCH`` (the lock's, or the environment's),
owner root, modes normalised, inode numbers counted from 1. The same lock and the same
checkout give byte-identical ``base.cpio`` and ``overlay.cpio``.

Layout of ``out_dir`` (default ``hil/build/``, git-ignored)::

    cache/debs/*.deb, cache/wheels/*.whl   downloads, kept across builds, verified on every use
    vmlinuz                                 the kernel (an uncompressed arm64 Image)
    base.cpio, base.key                     Debian userland + Python + wheels; rebuilt only
                                            when the lock or the recipe changes
    manifest.json                           lock digest, kernel release, sha256 of vmlinuz and base
    .lock                                   flock: one build at a time; refreshes read under it
"""
from __future__ import annotations

import compileall
import contextlib
import fcntl
import hashlib
import json
import os
import py_compile
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from hil.qemu import fetch, initramfs, lock
from hil.qemu.errors import HarnessError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = PROJECT_ROOT / "hil" / "build"
RECIPE = 2  # bump when the base's content changes for a reason the cache key cannot see

# Debian's cloud kernel flavour (a 21 MB .deb): PL011, initrd, devtmpfs and tmpfs are built in
# (see the package's /boot/config-*); virtio comes as modules (NET_MODULES below).
KERNEL_META = "linux-image-cloud-arm64"
# Python 3.11's minimal and stdlib packages with the libraries their extension modules need
# (`readelf -d` on every ELF checks the closure at build time), plus libc-bin (ldconfig, for
# ctypes.util.find_library) and libseccomp2 (pyseccomp loads it). libgcc-s1: cryptography's
# _rust.abi3.so needs libgcc_s.so.1. libnsl2/libtirpc3 are left out on purpose (they pull in
# krb5); the nis module, their only user, is deleted instead.
USERLAND_DEBS = (
    "busybox-static", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "python3-minimal", "libc6", "libc-bin", "libgcc-s1", "libffi8", "libssl3", "zlib1g", "libexpat1",
    "libbz2-1.0", "libcrypt1", "liblzma5", "libncursesw6", "libtinfo6", "libreadline8", "libsqlite3-0",
    "libuuid1", "libdb5.3", "libseccomp2", "util-linux", "libcap-ng0",
)
# From these only the named files: util-linux's setpriv (busybox's lacks --reuid), which the
# confinement tests use to start a probe under another uid; the rest would need more libraries.
PARTIAL_DEBS = {"util-linux": ("usr/bin/setpriv",)}
ARCH_ALL_DEBS = ("media-types",)
PRUNE = (
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
    "usr/share/bug", "usr/lib/python3.11/lib-dynload/nis.cpython-311-aarch64-linux-gnu.so",
    "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/tkinter", "usr/lib/python3.11/turtledemo",
)
# Dependencies shipped as wheels: aarch64 ones (compiled code) and pure-Python ones. The lock
# pins them at the host's installed versions, so guest and host run the same code.
BINARY_DISTS = ("cryptography", "cffi", "PyYAML",
                "hypothesis")  # the attack suite's property tests (tests/capability_violations)
PURE_DISTS = ("rich", "markdown-it-py", "mdurl", "Pygments", "pexpect", "ptyprocess", "pyseccomp",
              "kyber-py", "pycparser",
              # the test runner, so the guest runs the project's own confinement and attack tests
              "pytest", "pluggy", "iniconfig", "packaging", "pytest-timeout", "sortedcontainers",
              # the development EST CA, which the attack suite starts in the guest (hil/est_ca/tls.py)
              "pyOpenSSL", "typing_extensions")
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"  # on Debian python3.11's sys.path
PROJECT_DIRS = ("l4emu", "capabilities", "kernel_model", "roottasks", "protocols", "durable", "tasks", "hil", "images",
                "tests")
PROJECT_FILES = ("pyproject.toml",)  # pytest's configuration, for the tests run in the guest
SKIP_NAMES = {"__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache"}
SKIP_DIRS = {"hil/build", "hil/runs"}  # build output and run records are not source
# The NIC the guest gets when it may reach the EST CA on the host (virtio-mmio on -M virt):
# Debian's cloud kernel builds virtio as modules. /init loads them in this (dependency) order.
NET_MODULES = ("drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko", "drivers/virtio/virtio_mmio.ko",
               "net/core/failover.ko", "drivers/net/net_failover.ko", "drivers/net/virtio_net.ko")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Image:
    """A built guest: what ``Machine`` boots."""

    kernel: Path
    initrd: Path
    overlay_id: str  # printed by the guest's /init with its ready marker
    manifest: dict

    @classmethod
    def load(cls, out_dir: Path = DEFAULT_OUT) -> Image:
        out_dir = Path(out_dir)
        try:
            manifest = json.loads((out_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = None
        if not isinstance(manifest, dict) or "overlay_id" not in manifest \
                or not (out_dir / "vmlinuz").is_file() or not (out_dir / "initrd.cpio").is_file():
            raise HarnessError("image-not-built", f"no built HIL image in {out_dir}",
                               hint="build it with `l4emu hil build` (python -m hil.qemu.cli build)")
        return cls(out_dir / "vmlinuz", out_dir / "initrd.cpio", manifest["overlay_id"], manifest)


@contextlib.contextmanager
def _locked(out_dir: Path, exclusive: bool):
    """flock on ``out_dir/.lock``: builds exclude each other and every refresh; refreshes share."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def source_date_epoch(pinned: lock.Lock) -> int:
    """``$SOURCE_DATE_EPOCH`` (https://reproducible-builds.org/specs/source-date-epoch/), else the lock's value."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if raw:
        if not raw.isdigit():
            raise HarnessError("source-date-epoch-invalid", f"SOURCE_DATE_EPOCH must be an integer, got {raw!r}")
        return int(raw)
    return pinned.source_date_epoch


def write_lock(path: Path = lock.LOCK_PATH, *, scratch: Path | None = None, log: Log = print) -> lock.Lock:
    """``l4emu hil lock``: pin the index's candidates and the host's wheel versions into ``path``."""
    fetch.require_tools(("apt-cache",))
    kernel_pkg = fetch.kernel_package(KERNEL_META)
    debs = fetch.resolve_debs([f"{p}:arm64" for p in (kernel_pkg, *USERLAND_DEBS)] + list(ARCH_ALL_DEBS))
    with tempfile.TemporaryDirectory(prefix="l4emu-lock-") as tmp:
        wheels = fetch.resolve_wheels((*BINARY_DISTS, *PURE_DISTS), Path(scratch or tmp), log)
    release = kernel_pkg.removeprefix("linux-image-")
    try:
        epoch = lock.load(path).source_date_epoch
    except HarnessError:
        epoch = int(time.time())
    pinned = lock.Lock(lock.Kernel(kernel_pkg, debs[0].version, release), tuple(debs), tuple(wheels), epoch)
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_text(pinned.to_json())
    os.replace(tmp_path, path)
    log(f"lock: {path}: kernel {release}, {len(debs)} debs, {len(wheels)} wheels")
    return pinned


def build(out_dir: Path = DEFAULT_OUT, *, lock_path: Path = lock.LOCK_PATH, log: Log = print) -> Image:
    """Download what is missing (verified), (re)build the base if the lock changed, then an overlay in hil/build."""
    out_dir = Path(out_dir)
    started = time.monotonic()
    pinned = lock.load(lock_path)
    fetch.require_tools()
    old_umask = os.umask(0o022)  # modes of everything created here, for reproducibility
    try:
        with _locked(out_dir, exclusive=True):
            manifest = _build_locked(out_dir, pinned, log)
            # the image as built (`--no-refresh`, the exports): base + the overlay of this checkout
            staging = Path(tempfile.mkdtemp(prefix="overlay-", dir=out_dir))
            try:
                manifest["overlay_id"] = _build_overlay(staging / "overlay.cpio", staging / "root",
                                                        manifest["source_date_epoch"], {})
                _concatenate(out_dir / "initrd.cpio", out_dir / "base.cpio", staging / "overlay.cpio")
                manifest["sha256"]["overlay.cpio"] = lock.sha256_file(staging / "overlay.cpio")
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            manifest["sha256"]["initrd.cpio"] = lock.sha256_file(out_dir / "initrd.cpio")
            _write_json(out_dir / "manifest.json", manifest)
    finally:
        os.umask(old_umask)
    log(f"image: kernel {pinned.kernel.release}, initrd sha256 {manifest['sha256']['initrd.cpio']}, "
        f"{time.monotonic() - started:.1f} s")
    return Image.load(out_dir)


def _concatenate(dest: Path, *parts: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    os.replace(tmp, dest)


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


def _build_locked(out_dir: Path, pinned: lock.Lock, log: Log) -> dict:
    started = time.monotonic()
    cache = out_dir / "cache"
    debs = fetch.ensure_debs(list(pinned.debs), cache / "debs", log)
    kernel_deb = debs.pop(0)
    wheels = fetch.ensure_wheels(list(pinned.wheels), cache / "wheels", log)
    shipped = [w.name for w in pinned.wheels]
    missing = fetch.unshipped_requirements(("l4emu", *PURE_DISTS, *BINARY_DISTS), shipped)
    if missing:
        raise HarnessError("guest-dependency-missing", "the guest image would lack a runtime dependency",
                           context=missing, hint="add it to BINARY_DISTS or PURE_DISTS in hil/qemu/build.py, "
                                                 "then " + lock.UPDATE_HINT)
    downloaded = time.monotonic()
    epoch = source_date_epoch(pinned)
    _ensure_kernel(kernel_deb, pinned.deb(pinned.kernel.package).sha256, out_dir, log)
    key = hashlib.sha256(json.dumps({
        "recipe": RECIPE, "lock": pinned.digest(), "init": initramfs.INIT_SCRIPT, "prune": PRUNE,
        "partial": PARTIAL_DEBS, "modules": NET_MODULES, "python": list(sys.version_info[:2]), "epoch": epoch,
    }, sort_keys=True).encode()).hexdigest()
    key_file, base = out_dir / "base.key", out_dir / "base.cpio"
    base_seconds = None
    if base.is_file() and key_file.is_file() and key_file.read_text() == key:
        log(f"base: cached ({base.stat().st_size / 2**20:.1f} MiB, key {key[:12]})")
    else:
        t0 = time.monotonic()
        key_file.unlink(missing_ok=True)
        _build_base(debs, kernel_deb, pinned.kernel.release, wheels, out_dir, epoch, log)
        key_file.write_text(key)
        base_seconds = round(time.monotonic() - t0, 2)
        log(f"base: built in {base_seconds} s ({base.stat().st_size / 2**20:.1f} MiB)")
    return {
        "kernel": asdict(pinned.kernel), "lock_sha256": pinned.digest(), "source_date_epoch": epoch,
        "debs": [d.filename for d in pinned.debs], "wheels": [w.filename for w in pinned.wheels],
        "base_key": key, "sha256": {"vmlinuz": lock.sha256_file(out_dir / "vmlinuz"),
                                    "base.cpio": lock.sha256_file(base)},
        "timings": {"downloads_s": round(downloaded - started, 2), "base_s": base_seconds},
    }


def refresh(out_dir: Path = DEFAULT_OUT, dest: Path | None = None, *, extra_files: dict[str, bytes] | None = None,
            log: Log = print) -> Image:
    """The built base plus a fresh overlay (the checkout's current source) as an initrd in ``dest``.

    ``dest`` (default: a new directory under ``out_dir/runs-tmp``) belongs to this one run:
    concurrent runs never write the same file. ``extra_files`` (project-relative path -> bytes)
    go into the overlay too, e.g. the EST CA's trust anchor. The caller removes ``dest``.
    """
    out_dir = Path(out_dir)
    t0 = time.monotonic()
    image = Image.load(out_dir)
    if dest is None:
        (out_dir / "runs-tmp").mkdir(parents=True, exist_ok=True)
        dest = Path(tempfile.mkdtemp(prefix="run-", dir=out_dir / "runs-tmp"))
    dest.mkdir(parents=True, exist_ok=True)
    epoch = int(image.manifest.get("source_date_epoch", 0))
    old_umask = os.umask(0o022)
    try:
        overlay_id = _build_overlay(dest / "overlay.cpio", dest / "overlay-root", epoch, extra_files or {})
    finally:
        os.umask(old_umask)
    initrd = dest / "initrd.cpio"
    with _locked(out_dir, exclusive=False):
        base = out_dir / "base.cpio"
        if not base.is_file():
            raise HarnessError("image-not-built", f"no HIL base image in {out_dir}",
                               hint="build it with `l4emu hil build`")
        _concatenate(initrd, base, dest / "overlay.cpio")
    shutil.rmtree(dest / "overlay-root", ignore_errors=True)
    manifest = dict(image.manifest, overlay_id=overlay_id, initrd_bytes=initrd.stat().st_size,
                    overlay_s=round(time.monotonic() - t0, 2))
    log(f"overlay: {overlay_id} in {manifest['overlay_s']} s; initrd {initrd.stat().st_size / 2**20:.1f} MiB "
        f"in {dest}")
    return Image(out_dir / "vmlinuz", initrd, overlay_id, manifest)


# ------------------------------------------------------------------------ kernel
def _ensure_kernel(deb: Path, sha256: str, out_dir: Path, log: Log) -> None:
    """``out_dir/vmlinuz`` from the (verified) kernel .deb, streamed; the stamp is the .deb's sha256."""
    stamp = out_dir / "vmlinuz.from"
    if (out_dir / "vmlinuz").is_file() and stamp.is_file() and stamp.read_text() == sha256:
        return
    log(f"kernel: extracting vmlinuz from {deb.name}")
    stamp.unlink(missing_ok=True)
    if fetch.extract(deb, lambda name: out_dir / "vmlinuz" if re.fullmatch(r"boot/vmlinuz-[^/]+", name) else None) != 1:
        raise HarnessError("kernel-not-in-deb", f"{deb.name} holds no (or more than one) boot/vmlinuz-*")
    stamp.write_text(sha256)


def _install_wheel(wheel: Path, site: Path) -> None:
    """Unpack a wheel into site-packages (PEP 427): ``*.data/purelib|platlib`` to the top, scripts dropped."""
    with zipfile.ZipFile(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            if any(p in ("", "..") for p in parts):
                raise HarnessError("wheel-bad-path", f"{wheel.name}: unsafe member {info.filename!r}")
            dest = site.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)


def _build_base(debs: list[Path], kernel_deb: Path, release: str, wheels: list[Path], out_dir: Path,
                epoch: int, log: Log) -> None:
    root = out_dir / "base-root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    prefix = f"lib/modules/{release}/kernel/"
    wanted = {prefix + m: root / "lib/modules/hil" / Path(m).name for m in NET_MODULES}
    assert tuple(Path(m).name for m in NET_MODULES) == initramfs.NET_MODULES, "/init loads what the base ships"
    if fetch.extract(kernel_deb, wanted.get) != len(wanted):
        raise HarnessError("kernel-modules-missing", f"{kernel_deb.name} lacks one of {NET_MODULES}")
    for deb in debs:
        only = PARTIAL_DEBS.get(deb.name.split("_")[0])
        if only is None:
            fetch.run_tool(["dpkg-deb", "-x", str(deb), str(root)], "deb-unpack-failed")
        elif fetch.extract(deb, lambda name: root / name if name in only else None) != len(only):  # noqa: B023 (used at once)
            raise HarnessError("deb-unpack-failed", f"{deb.name} lacks one of {only}")
    for rel in PRUNE:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    site = root / SITE_PACKAGES
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        _install_wheel(wheel, site)
    _normalise_modes(site)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\ntty:x:5:\n")
    (root / "init").write_text(initramfs.INIT_SCRIPT)
    (root / "init").chmod(0o755)
    check_closure(root)
    _compile(root / "usr/lib/python3.11", "/usr/lib/python3.11", log)
    _compile(site, "/" + SITE_PACKAGES, log)
    tmp = out_dir / ".base.cpio.tmp"
    with open(tmp, "wb") as f:
        writer = initramfs.CpioWriter(f, mtime=epoch)
        writer.add_dir("dev")
        writer.add_chardev("dev/console", 5, 1)  # the console init's stdio opens, before devtmpfs
        count = writer.add_tree(root)
        writer.finish()
    os.replace(tmp, out_dir / "base.cpio")
    shutil.rmtree(root)  # 100 MB of staging; the archive is what is kept
    log(f"base: {count} entries from {len(debs) + 1} debs and {len(wheels)} wheels")


def check_closure(root: Path) -> None:
    """Fail the build (not the boot) if any ELF in ``root`` needs a library the image lacks."""
    elves = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and initramfs.is_elf(p)]
    info: dict[str, initramfs.DynamicInfo] = {}
    for i in range(0, len(elves), 200):
        chunk = elves[i:i + 200]
        out = fetch.run_tool(["readelf", "-d", "--wide", *map(str, chunk)], "readelf-failed")
        parsed = initramfs.parse_readelf_dynamic(out, single=str(chunk[0]) if len(chunk) == 1 else None)
        info.update({"/" + Path(k).relative_to(root).as_posix(): v for k, v in parsed.items()})
    missing = initramfs.missing_libraries(info, initramfs.guest_exists(root))
    if missing:
        raise HarnessError("guest-library-missing", f"{len(missing)} shared-library dependencies are not in the image",
                           context=[f"{elf} needs {lib}" for elf, lib in missing],
                           hint="add the Debian package that ships it to USERLAND_DEBS in hil/qemu/build.py")


def _normalise_modes(top: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(0o644)  # site-packages: nothing in it is executed directly


def _compile(src: Path, guest_dir: str, log: Log) -> None:
    """Precompile to .pyc (unchecked-hash: the image is immutable), so the guest never compiles.

    Only a host CPython 3.11 writes bytecode the guest's 3.11.2 loads (same magic number);
    on another host version the guest compiles at import time, which is only slower.
    """
    if sys.version_info[:2] != (3, 11):
        log(f"pyc: host Python is {sys.version.split()[0]}, not 3.11: {guest_dir} ships without bytecode")
        return
    compileall.compile_dir(str(src), ddir=guest_dir, quiet=2, workers=0, optimize=-1,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def project_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """The source files the guest gets: PROJECT_DIRS, without caches, bytecode and hil/build."""
    files: list[Path] = []
    for top in PROJECT_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / top):
            rel = Path(dirpath).relative_to(root)
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES and (rel / d).as_posix() not in SKIP_DIRS)
            files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.endswith((".pyc", ".pyo")))
    return files + [root / f for f in PROJECT_FILES]


def _build_overlay(out: Path, staging: Path, epoch: int, extra_files: dict[str, bytes]) -> str:
    shutil.rmtree(staging, ignore_errors=True)
    project = staging / initramfs.GUEST_PROJECT.lstrip("/")
    digest = hashlib.sha256()
    for path in project_files():
        rel = path.relative_to(PROJECT_ROOT)
        dest = project / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        digest.update(rel.as_posix().encode() + b"\0" + hashlib.sha256(data).digest())
        dest.write_bytes(data)
        dest.chmod(0o644)
    for name, data in sorted(extra_files.items()):
        dest = project / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        dest.write_bytes(data)
        dest.chmod(0o644)
    bin_dir, site = staging / "usr/local/bin", staging / SITE_PACKAGES
    bin_dir.mkdir(parents=True)
    site.mkdir(parents=True)
    (bin_dir / "l4emu").write_text(initramfs.L4EMU_SCRIPT)
    (bin_dir / "l4emu").chmod(0o755)
    (site / "l4emu.pth").write_text(initramfs.GUEST_PROJECT + "\n")
    for dirpath, _, _ in os.walk(staging):
        os.chmod(dirpath, 0o755)
    _compile(project, initramfs.GUEST_PROJECT, lambda _: None)
    overlay_id = digest.hexdigest()[:16]
    with open(out, "wb") as f:
        writer = initramfs.CpioWriter(f, mtime=epoch)
        writer.add_tree(staging)
        writer.add_dir("etc")
        writer.add_dir("etc/hil")
        writer.add_bytes(initramfs.SENTINEL, overlay_id.encode() + b"\n")  # last: proves the whole initrd unpacked
        writer.finish()
    shutil.rmtree(staging, ignore_errors=True)
    return overlay_id
