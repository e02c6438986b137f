"""Build the bootable aarch64 guest: a Debian arm64 kernel and an initramfs holding Python
3.11, the project's dependencies (aarch64 wheels) and the project's own source.

``build(out_dir) -> Image`` is the one entry point; ``refresh(out_dir)`` rebuilds only the
project overlay (what every run does). Nothing arm64 runs on the host: .debs are
unpacked with ``dpkg-deb -x`` (no maintainer scripts), wheels are unzipped, and every
ELF's NEEDED libraries are checked with ``readelf -d`` before the guest ever boots.
The recipe and its measurements: /work/shared/reference/hil-guest.md; docs/hil.md.

Layout of ``out_dir`` (default ``hil/build/``, git-ignored)::

    cache/debs/*.deb, cache/wheels/*.whl   downloads, kept across builds
    vmlinuz                                 the kernel (an uncompressed arm64 Image)
    base.cpio, base.key                     Debian userland + Python + wheels; rebuilt only
                                            when a package version or the recipe changes
    overlay.cpio                            the project's source (rebuilt every time)
    initrd.cpio                             base + overlay, what QEMU boots
    manifest.json                           versions, sizes, build timings
"""
from __future__ import annotations

import compileall
import hashlib
import importlib.metadata as md
import json
import os
import py_compile
import re
import shutil
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hil.qemu import fetch, initramfs
from hil.qemu.errors import HarnessError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = PROJECT_ROOT / "hil" / "build"
RECIPE = 1  # bump when the base's content changes for a reason the cache key cannot see

KERNEL_META = "linux-image-cloud-arm64"  # 21 MB deb; PL011, initrd, devtmpfs, tmpfs built in (hil-guest.md 2.2)
# The working set of hil-guest.md 2.3, plus libc-bin (ldconfig, for ctypes.util.find_library)
# and libseccomp2 (pyseccomp loads it). libgcc-s1: cryptography's _rust.abi3.so needs it (G2).
# libnsl2/libtirpc3 are left out on purpose (they pull in krb5, G3); the nis module goes instead.
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
# Dependencies shipped as aarch64 wheels (compiled code) and those copied from the host's
# environment (pure Python). Versions are pinned to the host's, so both run the same code (G18).
BINARY_DISTS = ("cryptography", "cffi", "PyYAML")
PURE_DISTS = ("rich", "markdown-it-py", "mdurl", "Pygments", "pexpect", "ptyprocess", "pyseccomp",
              "kyber-py", "pycparser",
              # the test runner, so the guest runs the project's own confinement and attack tests
              "pytest", "pluggy", "iniconfig", "packaging", "pytest-timeout")
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"  # on Debian python3.11's sys.path
PROJECT_DIRS = ("capabilities", "kernel_model", "tasks", "hil", "images", "tests")
PROJECT_FILES = ("pyproject.toml",)  # pytest's configuration, for the tests run in the guest
SKIP_NAMES = {"__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache"}
Log = Callable[[str], None]


@dataclass(frozen=True)
class Image:
    """A built guest: what ``Machine`` boots."""

    kernel: Path
    initrd: Path
    overlay_id: str  # printed by the guest's /init with its ready marker
    manifest: dict

    @classmethod
    def load(cls, out_dir: Path = DEFAULT_OUT) -> "Image":
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


def build(out_dir: Path = DEFAULT_OUT, *, log: Log = print) -> Image:
    """Download what is missing, (re)build the base if its inputs changed, then the overlay."""
    out_dir = Path(out_dir)
    started = time.monotonic()
    fetch.require_tools()
    cache = out_dir / "cache"
    kernel_pkg = fetch.kernel_package(KERNEL_META)
    debs = fetch.ensure_debs([f"{p}:arm64" for p in (kernel_pkg, *USERLAND_DEBS)] + list(ARCH_ALL_DEBS),
                             cache / "debs", log)
    kernel_deb = debs.pop(0)
    wheels = fetch.ensure_wheels(BINARY_DISTS, cache / "wheels", log)
    pure = {name: md.version(name) for name in PURE_DISTS}
    missing = fetch.unshipped_requirements(("l4emu", *PURE_DISTS, *BINARY_DISTS), (*PURE_DISTS, *BINARY_DISTS))
    if missing:
        raise HarnessError("guest-dependency-missing", "the guest image would lack a runtime dependency",
                           context=missing, hint="add it to BINARY_DISTS or PURE_DISTS in hil/qemu/build.py")
    downloaded = time.monotonic()

    kernel_name = _ensure_kernel(kernel_deb, out_dir, log)
    key = hashlib.sha256(json.dumps({
        "recipe": RECIPE, "debs": sorted(d.name for d in debs), "wheels": sorted(w.name for w in wheels),
        "pure": pure, "init": initramfs.INIT_SCRIPT, "prune": PRUNE, "partial": PARTIAL_DEBS,
        "python": list(sys.version_info[:2]),
    }, sort_keys=True).encode()).hexdigest()
    key_file, base = out_dir / "base.key", out_dir / "base.cpio"
    base_seconds = None
    if base.is_file() and key_file.is_file() and key_file.read_text() == key:
        log(f"base: cached ({base.stat().st_size / 2**20:.1f} MiB, key {key[:12]})")
    else:
        t0 = time.monotonic()
        _build_base(debs, wheels, out_dir, log)
        key_file.write_text(key)
        base_seconds = round(time.monotonic() - t0, 2)
        log(f"base: built in {base_seconds} s ({base.stat().st_size / 2**20:.1f} MiB)")
    manifest = {
        "kernel": kernel_name, "kernel_deb": kernel_deb.name, "debs": sorted(d.name for d in debs),
        "wheels": sorted(w.name for w in wheels), "pure": pure, "base_key": key,
        "timings": {"downloads_s": round(downloaded - started, 2), "base_s": base_seconds},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    image = refresh(out_dir, log=log)
    image.manifest["timings"]["total_s"] = round(time.monotonic() - started, 2)
    (out_dir / "manifest.json").write_text(json.dumps(image.manifest, indent=2))
    return image


def refresh(out_dir: Path = DEFAULT_OUT, *, log: Log = print) -> Image:
    """Rebuild the overlay (the checkout's current source) and the initrd; the base must exist."""
    out_dir = Path(out_dir)
    base = out_dir / "base.cpio"
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = None
    if manifest is None or not base.is_file():
        raise HarnessError("image-not-built", f"no HIL base image in {out_dir}",
                           hint="build it with `l4emu hil build` (python -m hil.qemu.cli build)")
    t0 = time.monotonic()
    overlay_id = _build_overlay(out_dir / "overlay.cpio", out_dir / "overlay-root")
    initrd = out_dir / "initrd.cpio"
    with open(initrd, "wb") as out:
        for part in (base, out_dir / "overlay.cpio"):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    manifest["overlay_id"] = overlay_id
    manifest.setdefault("timings", {})["overlay_s"] = round(time.monotonic() - t0, 2)
    manifest["initrd_bytes"] = initrd.stat().st_size
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    size_mib = initrd.stat().st_size / 2**20
    log(f"overlay: {overlay_id} in {manifest['timings']['overlay_s']} s; initrd {size_mib:.1f} MiB")
    return Image(out_dir / "vmlinuz", initrd, overlay_id, manifest)


# ------------------------------------------------------------------------ kernel
def _ensure_kernel(deb: Path, out_dir: Path, log: Log) -> str:
    """``out_dir/vmlinuz`` from the kernel .deb (streamed; the modules are not unpacked)."""
    stamp = out_dir / "vmlinuz.from"
    if (out_dir / "vmlinuz").is_file() and stamp.is_file() and stamp.read_text() == deb.name:
        return deb.name
    log(f"kernel: extracting vmlinuz from {deb.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if fetch.extract(deb, lambda name: out_dir / "vmlinuz" if re.fullmatch(r"boot/vmlinuz-[^/]+", name) else None) != 1:
        raise HarnessError("kernel-not-in-deb", f"{deb.name} holds no (or more than one) boot/vmlinuz-*")
    stamp.write_text(deb.name)
    return deb.name


# ---------------------------------------------------------------------- base, overlay
def _build_base(debs: list[Path], wheels: list[Path], out_dir: Path, log: Log) -> None:
    root = out_dir / "base-root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for deb in debs:
        only = PARTIAL_DEBS.get(deb.name.split("_")[0])
        if only is None:
            fetch.run_tool(["dpkg-deb", "-x", str(deb), str(root)], "deb-unpack-failed")
        elif fetch.extract(deb, lambda name: root / name if name in only else None) != len(only):
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
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    for name in PURE_DISTS:
        fetch.copy_distribution(name, site)
    _normalise_modes(site)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\ntty:x:5:\n")
    (root / "init").write_text(initramfs.INIT_SCRIPT)
    (root / "init").chmod(0o755)
    check_closure(root)
    _compile(root / "usr/lib/python3.11", "/usr/lib/python3.11", log)
    _compile(site, "/" + SITE_PACKAGES, log)
    with open(out_dir / "base.cpio", "wb") as f:
        writer = initramfs.CpioWriter(f)
        writer.add_dir("dev")
        writer.add_chardev("dev/console", 5, 1)  # the console init's stdio opens, before devtmpfs
        count = writer.add_tree(root)
        writer.finish()
    shutil.rmtree(root)  # 100 MB of staging; the archive is what is kept
    log(f"base: {count} entries from {len(debs)} debs and {len(wheels) + len(PURE_DISTS)} Python distributions")


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
    for dirpath, dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(0o755 if path.suffix == "" and os.access(path, os.X_OK) else 0o644)


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
    files = []
    for top in PROJECT_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / top):
            rel = Path(dirpath).relative_to(root)
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES and (rel / d).as_posix() != "hil/build")
            files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.endswith((".pyc", ".pyo")))
    return files + [root / f for f in PROJECT_FILES]


def _build_overlay(out: Path, staging: Path) -> str:
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
        writer = initramfs.CpioWriter(f)
        writer.add_tree(staging)
        writer.add_dir("etc")
        writer.add_dir("etc/hil")
        writer.add_bytes(initramfs.SENTINEL, overlay_id.encode() + b"\n")  # last: proves the whole initrd unpacked
        writer.finish()
    return overlay_id
