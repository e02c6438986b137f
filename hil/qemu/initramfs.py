"""What goes into the guest's initramfs, without I/O policy: the newc cpio writer, the
guest's ``/init``, and the shared-library closure check over ``readelf -d`` output.

Nothing here runs arm64 code or touches the network; ``build.py`` calls it.

The initrd QEMU boots is two concatenated newc archives (the kernel unpacks them in
order, a later entry replacing an earlier one): the *base* (Debian arm64 userland,
Python, the wheels; cached) and the *overlay* (the project's source; rebuilt for every
run, so the guest always runs the checkout's current code). The overlay's last entry is
``SENTINEL``: ``/init`` refuses to start without it, because an initramfs that does not
fit in RAM is unpacked only partly and the kernel carries on after printing "Initramfs
unpacking failed" (init/initramfs.c in the Linux sources).
"""
from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

NET_MODULES = ("virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "failover.ko", "net_failover.ko", "virtio_net.ko")

GUEST_PROJECT = "/opt/l4emu"  # the project's source tree in the guest (the guest shell's cwd)
SENTINEL = "etc/hil/overlay"  # written last into the overlay; its text is the overlay id
READY = "HIL-READY"  # /init prints "HIL-READY <overlay id>" when the shell is about to start
INIT_FAILED = "HIL-INIT-FAILED"  # /init prints "HIL-INIT-FAILED <why>" and powers off

# /init runs as PID 1 from busybox-static. Every line is a step a reader can check:
# mounts first (DEVTMPFS_MOUNT is off in Debian's kernels), then the ld.so cache
# (ctypes.util.find_library, which pyseccomp uses, reads `ldconfig -p`; the cache cannot
# be built on the host without running arm64 code), the loopback interface (the network
# proxy connects to 127.0.0.1 inside the guest), and, when the kernel command line carries
# l4emu_est_ca_port=PORT (the kernel hands unknown name=value parameters to init as
# environment variables, see the kernel's admin-guide/kernel-parameters), the virtio NIC on
# QEMU's user-mode network (10.0.2.15/24, QEMU's defaults), then the sentinel check, the ready
# marker and a shell with a controlling tty (busybox cttyhack), so that ^C reaches commands.
INIT_SCRIPT = f"""#!/bin/busybox sh
# /init of the l4emu HIL guest, written by hil/qemu/build.py. See docs/hil.md.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /root
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
ln -sf /usr/bin/setpriv /bin/setpriv  # util-linux's (--reuid), not busybox's, also on the default PATH /bin:/usr/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
dmesg -n 1
/sbin/ldconfig
ifconfig lo 127.0.0.1 netmask 255.0.0.0 up
if [ -n "$l4emu_est_ca_port" ]; then
    for m in {' '.join(NET_MODULES)}; do insmod /lib/modules/hil/$m || echo "HIL-NET module $m failed"; done
    ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up && route add default gw 10.0.2.2 || echo "HIL-NET eth0 failed"
fi
hostname l4emu-hil
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb NO_COLOR=1 COLUMNS=160
if [ ! -s /{SENTINEL} ]; then
    echo "{INIT_FAILED} the overlay sentinel /{SENTINEL} is missing (initramfs unpacked only partly?)"
    poweroff -f
fi
cd {GUEST_PROJECT}
echo "{READY} $(cat /{SENTINEL})"
exec setsid cttyhack sh
"""

# The command `l4emu` in the guest: the project is not pip-installed there, it is on
# sys.path through a .pth file (which `python3 -I`, used for task processes, still reads).
L4EMU_SCRIPT = """#!/usr/bin/python3
import sys

from l4emu.cli import main

sys.exit(main())
"""


# ------------------------------------------------------------------------- newc cpio
@dataclass
class CpioWriter:
    """Writes a newc ("070701") archive, the format the Linux initramfs unpacker reads.

    Every entry is owned by root and carries ``mtime`` (SOURCE_DATE_EPOCH), whatever the
    file's own timestamp: two archives of the same tree are byte-identical. Parents must come
    before children (the kernel does not create missing directories); ``add_tree`` walks
    top-down in sorted order, so it does.
    """

    out: BinaryIO
    mtime: int = 0
    _ino: int = 1
    _offset: int = 0

    def _header(self, name: str, mode: int, size: int, mtime: int | None = None,
                rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, self.mtime, size, 0, 0,
                  rdev[0], rdev[1], len(encoded), 0]
        self._ino += 1
        self._write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self._offset += len(data)

    def _pad(self) -> None:
        self._write(b"\0" * (-self._offset % 4))

    def add_dir(self, name: str, perm: int = 0o755, mtime: int = 0) -> None:
        self._header(name, stat.S_IFDIR | perm, 0, mtime)

    def add_bytes(self, name: str, data: bytes, perm: int = 0o644, mtime: int = 0) -> None:
        self._header(name, stat.S_IFREG | perm, len(data), mtime)
        self._write(data)
        self._pad()

    def add_symlink(self, name: str, target: str, mtime: int = 0) -> None:
        self.add_raw(name, stat.S_IFLNK | 0o777, target.encode(), mtime)

    def add_raw(self, name: str, mode: int, data: bytes, mtime: int = 0) -> None:
        self._header(name, mode, len(data), mtime)
        self._write(data)
        self._pad()

    def add_chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._header(name, stat.S_IFCHR | perm, 0, 0, (major, minor))

    def add_file(self, name: str, path: Path, st: os.stat_result) -> None:
        self._header(name, stat.S_IFREG | stat.S_IMODE(st.st_mode), st.st_size, int(st.st_mtime))
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                self._write(chunk)
        self._pad()

    def add_tree(self, root: Path, prefix: str = "") -> int:
        """Every directory, file and symlink under ``root``, named ``prefix/relative``. Returns the count."""
        count = 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            rel_dir = base.relative_to(root).as_posix()
            for name in [*sorted(dirnames), *sorted(filenames)]:
                path = base / name
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                entry = f"{prefix}/{rel}" if prefix else rel
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    self.add_raw(entry, stat.S_IFLNK | 0o777, os.readlink(path).encode(), int(st.st_mtime))
                elif stat.S_ISDIR(st.st_mode):
                    self.add_dir(entry, stat.S_IMODE(st.st_mode), int(st.st_mtime))
                elif stat.S_ISREG(st.st_mode):
                    self.add_file(entry, path, st)
                else:
                    continue  # sockets, fifos, devices: never part of a package tree
                count += 1
        return count

    def finish(self) -> None:
        self._header("TRAILER!!!", 0, 0, 0)
        self._write(b"\0" * (-self._offset % 512))


# ------------------------------------------------------------- ELF dependency closure
@dataclass
class DynamicInfo:
    """What ``readelf -d`` says about one ELF file."""

    needed: list[str] = field(default_factory=list)
    runpath: list[str] = field(default_factory=list)  # RPATH and RUNPATH entries, ':'-split


_FILE_RE = re.compile(r"^File: (.+?)\s*$")
_NEEDED_RE = re.compile(r"\(NEEDED\)\s+Shared library: \[(.+)\]")
_RUNPATH_RE = re.compile(r"\((?:RPATH|RUNPATH)\)\s+Library r(?:un)?path: \[(.*)\]")


def parse_readelf_dynamic(text: str, single: str | None = None) -> dict[str, DynamicInfo]:
    """Parse the output of ``readelf -d --wide FILE...``.

    With several files readelf starts each section with ``File: NAME``; with one file it
    does not, so the caller names it (``single``). Static files ("There is no dynamic
    section") map to an empty DynamicInfo.
    """
    result: dict[str, DynamicInfo] = {}
    current = single
    if single is not None:
        result[single] = DynamicInfo()
    for line in text.splitlines():
        if m := _FILE_RE.match(line):
            current = m.group(1)
            result.setdefault(current, DynamicInfo())
            continue
        if current is None:
            continue
        if m := _NEEDED_RE.search(line):
            result[current].needed.append(m.group(1))
        elif m := _RUNPATH_RE.search(line):
            result[current].runpath.extend(p for p in m.group(1).split(":") if p)
    return result


LIBRARY_DIRS = ("/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib", "/usr/lib")


def missing_libraries(elves: dict[str, DynamicInfo], exists: Callable[[str], bool],
                      library_dirs: Iterable[str] = LIBRARY_DIRS) -> list[tuple[str, str]]:
    """``(elf, library)`` for every NEEDED library the dynamic loader would not find.

    ``elves`` is keyed by guest path (``/usr/lib/...``); ``exists`` answers for a guest
    path. The search is the loader's: RPATH/RUNPATH (``$ORIGIN`` is the ELF's directory),
    then the default directories. A NEEDED name with a ``/`` is a path.
    """
    dirs = tuple(library_dirs)
    missing = []
    for elf, info in sorted(elves.items()):
        origin = str(PurePosixPath(elf).parent)
        search = [p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for p in info.runpath] + list(dirs)
        for lib in info.needed:
            if "/" in lib:
                found = exists(posixpath.normpath(lib))
            else:
                found = any(exists(posixpath.normpath(posixpath.join(d, lib))) for d in search)
            if not found:
                missing.append((elf, lib))
    return missing


def guest_exists(root: Path) -> Callable[[str], bool]:
    """``exists(guest_path)`` for a tree unpacked at ``root``: symlinks resolve inside it, as in the guest."""

    def resolve(path: str, depth: int = 0) -> Path | None:
        if depth > 40:
            return None
        here = root
        parts = [p for p in PurePosixPath(path).parts if p != "/"]
        for i, part in enumerate(parts):
            if part == "..":
                here = here.parent if here != root else root
                continue
            nxt = here / part
            if nxt.is_symlink():
                target = os.readlink(nxt)
                base = "/" if target.startswith("/") else "/" + here.relative_to(root).as_posix()
                rest = "/".join(parts[i + 1:])
                return resolve(str(PurePosixPath(base) / target / rest), depth + 1)
            here = nxt
        return here

    def exists(path: str) -> bool:
        resolved = resolve(path)
        return resolved is not None and resolved.exists()

    return exists


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False
