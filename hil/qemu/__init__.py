"""The device side of HIL: the same l4emu system booted inside an aarch64 QEMU guest.

- ``build``: a Debian arm64 kernel plus an initramfs with Python 3.11, the project's
  dependencies (aarch64 wheels) and the project's source (``build(out_dir) -> Image``).
- ``machine``: boots an ``Image`` under qemu-system-aarch64 (TCG) and drives its serial
  console with pexpect (``Machine(image)`` as a context manager, ``.run(cmd, timeout)``).
- ``initramfs``: the pure parts of the image (newc cpio, ``/init``, the readelf closure check).
- ``errors``: ``HilError`` and the three failure classes behind ``l4emu hil``'s exit codes.
- ``cli``: ``build``, ``run IMAGE``, ``shell``.

How to use it and what was measured: docs/hil.md.
"""
