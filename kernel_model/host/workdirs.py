"""Work-dir budgets: each task's work dir is a filesystem of its own, of a fixed size and inode count.

The work dir ``<run>/<task>/`` stays where it was; its contents live in ``<run>/<task>.ext4``, an
ext4 image of the task's budget (``workdir: {size, files}`` in the image, default 32 MiB and 512
files) that the task's bootstrap loop-mounts over the work dir *inside its own mount namespace*
(``tasks/runtime/confine.py``). So a task that writes past its budget gets ENOSPC (bytes or
inodes), the host's disk is never at risk, and the mount disappears with the task (the loop device
is set to auto-clear), even after kill -9 of the kernel. The state is as durable as before: ext4
journals, and a file written with the usual write-temp-then-rename survives a crash.

The first boot creates the image (``mkfs.ext4``, root-only 0600) and moves into it whatever a
plain work dir held (state from before budgets existed); the plain files stay where they were,
unseen by the task. Host tools read and write the state with ``export_files``/``import_files``
(e2fsprogs' ``debugfs``/``mkfs.ext4 -d``: no mount needed). Without loop devices or e2fsprogs
(a container without /dev/loop-control) the work dir stays a plain directory and the boot log says
the budget is not enforced.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

MKFS = "mkfs.ext4"


def image_for(workdir: Path) -> Path:
    return workdir.with_name(workdir.name + ".ext4")


def available() -> bool:
    """Loop devices and mkfs.ext4 are there (the kernel is root)."""
    return os.geteuid() == 0 and os.path.exists("/dev/loop-control") and shutil.which(MKFS) is not None


def ensure_image(workdir: Path, size: int, files: int, exclude: tuple[str, ...] = ()) -> Path:
    """The work dir's filesystem image, created (atomically) on first use, seeded from a plain work dir
    (without the ``exclude`` entries: directories the host keeps serving there, such as device channels)."""
    image = image_for(workdir)
    if image.exists():
        return image
    seed = [p for p in workdir.iterdir() if p.name not in exclude] if workdir.is_dir() else []
    if not seed:
        make_image(image, size, files)
    elif not exclude:
        make_image(image, size, files, workdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "seed"
            shutil.copytree(workdir, copy, symlinks=True, ignore=lambda d, names: exclude if Path(d) == workdir else ())
            make_image(image, size, files, copy)
    return image


def make_image(image: Path, size: int, files: int, seed: Path | None = None) -> None:
    tmp = image.with_name(image.name + ".tmp")
    args = [MKFS, "-q", "-F", "-t", "ext4", "-N", str(files), "-m", "0", "-L", "l4emu-work",
            "-E", "root_owner=0:0,lazy_itable_init=0"]
    if seed is not None:
        args += ["-d", str(seed)]
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.close(fd)
    result = subprocess.run(args + [str(tmp), f"{max(size, 1 << 20) // 1024}k"], capture_output=True, text=True)
    if result.returncode:
        tmp.unlink(missing_ok=True)
        raise OSError(f"{MKFS} {image}: {result.stderr.strip() or result.stdout.strip()}")
    os.replace(tmp, image)


def export_files(workdir: Path, dest: Path) -> Path:
    """Copy the files of a task's work dir (its image, or the plain dir) into ``dest`` (host tools, tests)."""
    image = image_for(workdir)
    dest.mkdir(parents=True, exist_ok=True)
    if not image.exists():
        shutil.copytree(workdir, dest, dirs_exist_ok=True)
        return dest
    # a live task may have it mounted: read a copy, with the journal replayed (what was fsync'd is there)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.ext4"
        subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
        subprocess.run(["e2fsck", "-f", "-y", str(copy)], capture_output=True)  # exit 1: "fixed", i.e. replayed
        result = subprocess.run(["debugfs", "-R", f"rdump / {dest}", str(copy)], capture_output=True, text=True)
    if result.returncode:
        raise OSError(f"debugfs {image}: {result.stderr.strip()}")
    shutil.rmtree(dest / "lost+found", ignore_errors=True)
    return dest


def import_files(source: Path, workdir: Path, size: int, files: int) -> Path:
    """Replace a task's work-dir contents with the files in ``source`` (a new image)."""
    image = image_for(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    make_image(image, size, files, source)
    return image
