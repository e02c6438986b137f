"""The device side of HIL: the same l4emu system booted inside an aarch64 QEMU guest.

- ``build``: a Debian arm64 kernel plus an initramfs with Python 3.11, the project's
  dependencies (aarch64 wheels) and the project's source (``build(out_dir) -> Image``).
- ``lock`` and ``fetch``: every input pinned and hashed in ``lock.json``; downloads and their cache.
- ``machine``: boots an ``Image`` under qemu-system-aarch64 (TCG), or attaches to a board's serial
  line, and drives the console with pexpect (``Machine(image)`` as a context manager,
  ``.run(cmd, timeout)``); ``timeouts``: its one timeout model; ``pool``: guests shared by tests.
- ``initramfs``: the pure parts of the image (newc cpio, ``/init``, the readelf closure check).
- ``relay``: the guest's one network path, a TCP relay to the EST CA on the host.
- ``record`` (a run's record under ``hil/runs/``), ``junit`` (per-test results from the guest),
  ``export`` (a labgrid environment, a LAVA job).
- ``errors``: ``HilError`` and the three failure classes behind ``l4emu hil``'s exit codes.
- ``cli``: ``lock``, ``build``, ``run IMAGE``, ``shell``, ``export``.

How to use it and what was measured: docs/hil.md.
"""
