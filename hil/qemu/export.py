"""The same guest for engines beyond this laptop: a labgrid environment and a LAVA job.

- ``labgrid_env``: a labgrid environment (labgrid docs, "Configuration" -> "Environment
  Configuration"; QEMUDriver in "Drivers") with target ``main``: a ``QEMUDriver`` booting the
  built kernel and initramfs on ``-M virt`` with the HIL command line. labgrid's QEMUDriver has
  no initrd option, so ``-initrd`` goes through ``extra_args``; ``-no-shutdown`` keeps QEMU up
  after the guest powers off, so labgrid's own ``off()`` still has a QEMU to quit.
- ``lava_job``: a LAVA job for the ``qemu`` device type (LAVA docs, "Job definitions",
  "deploy to tmpfs", "boot method qemu", "Interactive tests"): deploy kernel and initrd with
  their sha256, boot, wait for the guest's ready marker, run ``l4emu boot IMAGE`` as an
  interactive test whose success and failure messages are the guest command's own status line.

Both are plain YAML written with PyYAML; the tests load them with the tools' own parsers
(``labgrid.Environment``, ``lava_common.schemas.validate``).
"""
from __future__ import annotations

import shlex

import yaml

from hil.qemu.build import Image
from hil.qemu.initramfs import READY
from hil.qemu.machine import MachineConfig


def _extra_args(image: Image, config: MachineConfig) -> list[str]:
    return ["-smp", str(config.smp), "-nodefaults", "-nic", "none", "-no-reboot", "-no-shutdown",
            "-initrd", str(image.initrd)]


def labgrid_env(image: Image, config: MachineConfig = MachineConfig()) -> str:
    doc = {
        "targets": {
            "main": {
                "resources": {},
                "drivers": {
                    "QEMUDriver": {
                        "qemu_bin": "qemu_aarch64",
                        "machine": "virt",
                        "cpu": config.cpu,
                        "memory": f"{config.memory_mib}M",
                        "kernel": "kernel",
                        "extra_args": shlex.join(_extra_args(image, config)),
                        "boot_args": " ".join(config.cmdline),
                        "display": "none",
                    },
                },
            },
        },
        "tools": {"qemu_aarch64": shutil_which(config.qemu)},
        "images": {"kernel": str(image.kernel), "initrd": str(image.initrd)},
    }
    header = (f"# labgrid environment for the l4emu HIL guest (written by `l4emu hil export labgrid`).\n"
              f"# Overlay {image.overlay_id}; the guest prints '{READY} <overlay>' and then runs a root shell on\n"
              f"# the console. Use: labgrid-client / pytest --lg-env this.yaml, console.expect('{READY}').\n")
    return header + yaml.safe_dump(doc, sort_keys=False)


def shutil_which(binary: str) -> str:
    import shutil

    return shutil.which(binary) or binary


def lava_job(image: Image, config: MachineConfig = MachineConfig(), *, command: str,
             base_url: str | None = None, job_name: str = "l4emu-hil") -> str:
    def url(path) -> str:
        return f"{base_url.rstrip('/')}/{path.name}" if base_url else f"file://{path}"

    sha = image.manifest.get("sha256", {})
    kernel_sha = sha.get("vmlinuz")
    initrd_sha = sha.get("initrd.cpio") if image.initrd.name == "initrd.cpio" else None
    from hil.qemu.lock import sha256_file

    kernel_sha = kernel_sha or sha256_file(image.kernel)
    initrd_sha = initrd_sha or sha256_file(image.initrd)
    doc = {
        "device_type": "qemu",
        "job_name": job_name,
        "timeouts": {"job": {"minutes": 30}, "action": {"minutes": 10}, "connection": {"minutes": 2}},
        "priority": "medium",
        "visibility": "public",
        "context": {
            "arch": "arm64", "machine": "virt", "cpu": config.cpu, "memory": config.memory_mib,
            "extra_options": ["-smp", str(config.smp), "-nic", "none", "-no-reboot"],
        },
        "metadata": {"l4emu.overlay": image.overlay_id,
                     "l4emu.kernel": str((image.manifest.get("kernel") or {}).get("release", ""))},
        "actions": [
            {"deploy": {
                "to": "tmpfs",
                "timeout": {"minutes": 5},
                "images": {
                    "kernel": {"image_arg": "-kernel {kernel}", "url": url(image.kernel), "sha256sum": str(kernel_sha)},
                    "initrd": {"image_arg": "-initrd {initrd}", "url": url(image.initrd), "sha256sum": str(initrd_sha)},
                },
            }},
            {"boot": {
                "method": "qemu",
                "media": "tmpfs",
                "timeout": {"minutes": 5},
                "prompts": [f"{READY} {image.overlay_id}"],
            }},
            {"test": {
                "timeout": {"minutes": 15},
                "interactive": [{
                    "name": "l4emu-boot",
                    "prompts": ["# "],
                    "script": [{
                        "name": "l4emu-boot",
                        "command": f"{command}; echo L4EMU-STATUS-$?",
                        "successes": [{"message": "L4EMU-STATUS-0"}],
                        "failures": [{"message": "L4EMU-STATUS-[1-9]", "exception": "TestError",
                                      "error": "l4emu boot failed in the guest"}],
                    }],
                }],
            }},
        ],
    }
    header = ("# LAVA job for the l4emu HIL guest (written by `l4emu hil export lava`), qemu device type.\n"
              "# Submit with `lavacli jobs submit this.yaml`; serve vmlinuz and initrd.cpio at --base-url.\n")
    return header + yaml.safe_dump(doc, sort_keys=False)
