"""Files that survive a crash (a leaf package: it imports nothing of the project).

- ``fileops``: the one small file-operations interface every durable write goes through
  (``FileOps``), and ``OS``, its implementation on the operating system;
- ``atomic``: the write sequences built on it: ``replace_file`` (temp + fsync + rename + dir
  fsync), ``append_record`` (append + fdatasync), ``atomic_write``, ``clean_stale_temps``;
- ``sealed``: one KEK-sealed store file (AES-256-GCM under a key-encryption key), used by
  the crypto service's key store and the EST service's state;
- ``faults``: a recording, crash- and fault-injecting ``FileOps`` for tests (every crash point
  of a write sequence, torn writes, power loss, a full disk).

docs/durability.md says what is guaranteed and how it is tested.
"""
