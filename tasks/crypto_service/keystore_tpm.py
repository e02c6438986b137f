"""TPM 2.0 backend: the key-encryption key is sealed to the TPM; a TPM NV counter is the rollback witness.

Through the maintained Python TSS binding ``tpm2-pytss`` (ESAPI). What the TPM does:

- A primary storage key (ECC P-256, owner hierarchy) derived from the TPM's
  owner seed with a fixed template, so it is the same after every reboot of
  the system or the TPM and never needs to be stored.
- The KEK (32 random bytes) is a *sealed data object* under that primary key:
  ``<path>.tpmkek`` holds its TPM2B_PRIVATE (encrypted by the TPM with the
  primary key, which never leaves it) and TPM2B_PUBLIC. Only this TPM can
  unseal it: a copy of the store file and the blob decrypts nothing elsewhere.
  Unsealed once at load, the KEK lives in the AES-GCM context of the process.
- An NV counter index (``TPM_NT_COUNTER``: it can only go up, and survives
  reboots) holds the store generation: an old copy of the store file is
  refused. ``storage.nv_index`` picks it (default: derived from the file name).

TCTI (how the TPM is reached), ``storage.tcti``:

- ``swtpm:/path/to/socket``: swtpm's unix-socket server channel (raw TPM
  commands), as tests and the development boot start it;
- ``fifo:DIR``: the boot's relay for a confined task (``DIR/cmd``,
  ``DIR/rsp``; kernel_model/host/keystore_devices.py), which may not open
  sockets at all -- the same role as a device node;
- anything else goes to the TSS's TCTI loader: ``device:/dev/tpmrm0`` for a
  real TPM through the kernel's resource manager, ``tabrmd``, ``mssim:...``.
"""

from __future__ import annotations

import os
import socket
import struct
import zlib
from pathlib import Path
from typing import Any

from durable.atomic import Step, replace_file
from durable.fileops import OS, FileOps

from .keystore import AesSealer, Rng, SealedStore, StoreError

TPM_HEADER = 10
MAX_RESPONSE = 4096
NV_INDEX_BASE = 0x01C1_0000  # owner NV range; + 16 bits from the store's file name
#: what the boot's relay writes instead of a response when the TPM does not answer
_CONNECTIONS: dict[str, Any] = {}
RELAY_UNREACHABLE = b"\x00\x00\x00\x00\x00\x0a\x00\x00\x00\x00"


def _tpm() -> Any:
    """tpm2-pytss, imported when a TPM store is opened (it loads the TSS C libraries). The TSS's
    own log lines (e.g. "NV index not defined" while probing) are silenced: every failure that
    matters reaches the service as a StoreError and is logged there, once."""
    os.environ.setdefault("TSS2_LOG", "all+none")  # read by the TSS C libraries on their first log line
    import tpm2_pytss

    return tpm2_pytss


def _frame_size(header: bytes) -> int:
    size = struct.unpack(">I", header[2:6])[0]
    if not TPM_HEADER <= size <= MAX_RESPONSE:
        raise OSError(f"TPM response of {size} bytes")
    return size


def _read_exact(read: Any, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = read(n - len(out))
        if not chunk:
            raise OSError("the TPM connection closed")
        out += chunk
    return out


def make_tcti(spec: str) -> Any:
    from tpm2_pytss.TCTI import PyTCTI

    class SocketTcti(PyTCTI):
        """swtpm's server channel on a unix socket; reconnects after the TPM restarts."""

        def __init__(self, path: str) -> None:
            super().__init__(max_size=MAX_RESPONSE)
            self.path = path
            self.sock: socket.socket | None = None

        def do_transmit(self, command: bytes) -> None:
            try:
                if self.sock is None:
                    self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self.sock.settimeout(30)
                    self.sock.connect(self.path)
                self.sock.sendall(command)
            except OSError:
                self.do_finalize()
                raise

        def do_receive(self, timeout: int) -> bytes:
            try:
                sock = self.sock
                if sock is None:  # not connected: answered like a closed connection (below)
                    raise OSError("not connected")
                head = _read_exact(sock.recv, TPM_HEADER)
                return head + _read_exact(sock.recv, _frame_size(head) - TPM_HEADER)
            except (OSError, AttributeError):
                self.do_finalize()
                raise OSError(f"the TPM at {self.path} does not answer") from None

        def do_finalize(self) -> None:
            if self.sock is not None:
                self.sock.close()
            self.sock = None

    class FifoTcti(PyTCTI):
        """The boot's relay: commands into ``DIR/cmd``, responses from ``DIR/rsp``."""

        def __init__(self, directory: str) -> None:
            super().__init__(max_size=MAX_RESPONSE)
            self.dir = directory
            self.cmd: int | None = None
            self.rsp: int | None = None

        def do_transmit(self, command: bytes) -> None:
            try:
                if self.cmd is None:
                    self.cmd = os.open(os.path.join(self.dir, "cmd"), os.O_WRONLY)
                    self.rsp = os.open(os.path.join(self.dir, "rsp"), os.O_RDONLY)
                view = memoryview(command)
                while view:
                    view = view[os.write(self.cmd, view):]
            except OSError:
                self.do_finalize()
                raise

        def do_receive(self, timeout: int) -> bytes:
            try:
                rsp = self.rsp
                if rsp is None:  # what os.read(None, n) raised before: handled like it (below)
                    raise TypeError("the relay's response FIFO is not open")
                read = lambda n: os.read(rsp, n)  # noqa: E731
                head = _read_exact(read, TPM_HEADER)
                if head == RELAY_UNREACHABLE:
                    raise OSError("the TPM does not answer (the relay cannot reach it)")
                return head + _read_exact(read, _frame_size(head) - TPM_HEADER)
            except (OSError, TypeError):
                self.do_finalize()
                raise

        def do_finalize(self) -> None:
            for fd in (self.cmd, self.rsp):
                if fd is not None:
                    os.close(fd)
            self.cmd = self.rsp = None

    kind, _, rest = spec.partition(":")
    if kind == "swtpm" and rest.startswith("/"):
        return SocketTcti(rest)
    if kind == "swtpm" and rest and "=" not in rest:
        return SocketTcti(os.path.abspath(rest))
    if kind == "fifo" and rest:
        return FifoTcti(os.path.abspath(rest))
    from tpm2_pytss import TCTILdr

    return TCTILdr.parse(spec)


class TpmCounter:
    """Rollback witness: a TPM NV counter (the store generation)."""

    def __init__(self, store: TpmKeyStore) -> None:
        self._store = store
        self.fresh = False  #: defined by this process (a brand-new store may start empty)

    def read(self) -> int:
        return self._store._call(self._store._counter_read)

    def advance(self, generation: int) -> None:
        self._store._call(lambda: self._store._counter_advance(generation))


class TpmKeyStore(SealedStore):
    backend = "tpm"

    def __init__(self, path: str | os.PathLike[str], tcti: str, rng: Rng = os.urandom, *,
                 nv_index: int | None = None, must_exist: bool = False,
                 step_hook: Step | None = None, ops: FileOps = OS) -> None:
        path = Path(path)
        self.tcti_spec = tcti
        self.nv_index = nv_index if nv_index is not None else NV_INDEX_BASE + (zlib.crc32(path.name.encode()) & 0xFFFF)
        if not 0x0100_0000 <= self.nv_index <= 0x01FF_FFFF:
            raise ValueError("storage.nv_index must be an owner NV index (0x01000000..0x01FFFFFF)")
        self.blob_path = path.with_name(path.name + ".tpmkek")
        self._counter = TpmCounter(self)
        super().__init__(path, None, self._counter, rng, step_hook, must_exist, ops)
        self._esapi: Any = None
        self._nv: Any = None

    # -- the device

    def _call(self, fn: Any) -> Any:
        """Run ``fn`` against the TPM; transport and TPM failures become StoreError."""
        tpm = _tpm()
        try:
            if self._esapi is None:
                if self.tcti_spec not in _CONNECTIONS:  # one per TPM per process (swtpm serves one at a time)
                    _CONNECTIONS[self.tcti_spec] = tpm.ESAPI(make_tcti(self.tcti_spec))
                self._esapi = _CONNECTIONS[self.tcti_spec]
            return fn()
        except StoreError:
            raise
        except (OSError, tpm.TSS2_Exception) as exc:
            unreachable = isinstance(exc, OSError) or "tcti" in str(exc).lower()
            self._forget_connection()
            what = "does not answer" if unreachable else "refused"
            raise StoreError(f"TPM ({self.tcti_spec}) {what}: {exc}", retry=unreachable) from exc

    def _forget_connection(self) -> None:
        esapi = _CONNECTIONS.pop(self.tcti_spec, None)
        if esapi is not None:
            try:
                esapi.close()
            except Exception:
                pass
        self._esapi, self._nv = None, None

    def _open_device(self) -> None:
        if self._sealer is None:
            self._call(self._unseal_kek)

    def close(self) -> None:
        self._esapi, self._nv = None, None  # the connection stays for the process's other stores

    # -- KEK sealed under the owner primary key

    def _flush_transients(self) -> None:
        """Transient objects left by a process that died mid-way (a bare swtpm has no resource
        manager; behind /dev/tpmrm0 this list holds only our own, i.e. none)."""
        tpm = _tpm()
        _more, data = self._esapi.get_capability(tpm.TPM2_CAP.HANDLES, tpm.TPM2_HT.TRANSIENT << 24, 64)
        for handle in data.data.handles:
            self._esapi.flush_context(self._esapi.tr_from_tpmpublic(handle))

    def _primary(self) -> Any:
        tpm = _tpm()
        self._flush_transients()
        template = tpm.TPM2B_PUBLIC.parse(
            "ecc256:aes128cfb",
            objectAttributes="userwithauth|restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|noda",
        )
        handle, *_ = self._esapi.create_primary(tpm.TPM2B_SENSITIVE_CREATE(), template, tpm.ESYS_TR.OWNER)
        return handle

    def _unseal_kek(self) -> None:
        tpm = _tpm()
        try:
            blob = self.ops.read(self.blob_path)
        except FileNotFoundError:
            blob = None
        primary = self._primary()
        try:
            if blob is None:
                if self.ops.exists(self.path):
                    raise StoreError(f"{self.path} exists but its sealed KEK {self.blob_path} is missing: "
                                     "nothing can decrypt it")
                blob = self._seal_new_kek(primary)
            try:
                private, used = tpm.TPM2B_PRIVATE.unmarshal(blob)
                public, _ = tpm.TPM2B_PUBLIC.unmarshal(blob[used:])
            except Exception as exc:
                raise StoreError(f"{self.blob_path} is damaged: {exc}") from exc
            try:
                sealed = self._esapi.load(primary, private, public)
            except tpm.TSS2_Exception as exc:
                raise StoreError(f"this TPM cannot load the sealed KEK {self.blob_path} (a different or cleared "
                                 f"TPM?): {exc}") from exc
            try:
                kek = bytearray(bytes(self._esapi.unseal(sealed)))
            finally:
                self._esapi.flush_context(sealed)
        finally:
            self._esapi.flush_context(primary)
        self._sealer = AesSealer(kek)  # zeroes kek
        self._ensure_counter()

    def _seal_new_kek(self, primary: Any) -> bytes:
        tpm = _tpm()
        kek = bytearray(self._rng(32))
        try:
            sensitive = tpm.TPM2B_SENSITIVE_CREATE(
                tpm.TPMS_SENSITIVE_CREATE(data=tpm.TPM2B_SENSITIVE_DATA(bytes(kek))))
        finally:
            kek[:] = bytes(32)
        attrs = (tpm.TPMA_OBJECT.FIXEDTPM | tpm.TPMA_OBJECT.FIXEDPARENT | tpm.TPMA_OBJECT.USERWITHAUTH
                 | tpm.TPMA_OBJECT.NODA)
        public = tpm.TPM2B_PUBLIC(tpm.TPMT_PUBLIC(type=tpm.TPM2_ALG.KEYEDHASH, nameAlg=tpm.TPM2_ALG.SHA256,
                                                  objectAttributes=attrs))
        public.publicArea.parameters.keyedHashDetail.scheme.scheme = tpm.TPM2_ALG.NULL
        private, out_public, *_ = self._esapi.create(primary, sensitive, public)
        blob = private.marshal() + out_public.marshal()
        try:
            replace_file(self.blob_path, blob, ops=self.ops, step=self._step)
        except OSError as exc:
            raise StoreError(f"cannot write {self.blob_path}: {exc}") from exc
        return blob

    # -- NV counter

    def _ensure_counter(self) -> None:
        tpm = _tpm()
        try:
            nv = self._esapi.tr_from_tpmpublic(self.nv_index)
        except tpm.TSS2_Exception:
            nv = None
        if nv is not None:
            public, _ = self._esapi.nv_read_public(nv)
            nt = (int(public.nvPublic.attributes) & tpm.TPMA_NV.TPM2_NT_MASK) >> tpm.TPMA_NV.TPM2_NT_SHIFT
            if nt != tpm.TPM2_NT.COUNTER:
                raise StoreError(f"TPM NV index {self.nv_index:#x} exists but is not a counter: "
                                 "choose another storage.nv_index")
            self._nv = nv
            if not int(public.nvPublic.attributes) & tpm.TPMA_NV.WRITTEN:
                self._esapi.nv_increment(nv, tpm.ESYS_TR.OWNER)
            return
        attributes = (tpm.TPM2_NT.COUNTER << tpm.TPMA_NV.TPM2_NT_SHIFT | tpm.TPMA_NV.OWNERWRITE
                      | tpm.TPMA_NV.OWNERREAD | tpm.TPMA_NV.AUTHREAD | tpm.TPMA_NV.AUTHWRITE | tpm.TPMA_NV.NO_DA)
        nv_public = tpm.TPM2B_NV_PUBLIC(tpm.TPMS_NV_PUBLIC(nvIndex=self.nv_index, nameAlg=tpm.TPM2_ALG.SHA256,
                                                           attributes=attributes, dataSize=8))
        self._nv = self._esapi.nv_define_space(None, nv_public)
        self._esapi.nv_increment(self._nv, tpm.ESYS_TR.OWNER)  # a counter is readable once written
        self._counter.fresh = not self.path.exists()

    def _counter_read(self) -> int:
        tpm = _tpm()
        if self._nv is None:
            self._unseal_kek() if self._sealer is None else self._ensure_counter()
        return int.from_bytes(bytes(self._esapi.nv_read(self._nv, 8, 0, tpm.ESYS_TR.OWNER)), "big")

    def _counter_advance(self, generation: int) -> None:
        tpm = _tpm()
        if self._nv is None:
            self._ensure_counter()
        self._counter.fresh = False
        for _ in range(3):  # normally once; a crash between file and counter leaves it one behind
            value = int.from_bytes(bytes(self._esapi.nv_read(self._nv, 8, 0, tpm.ESYS_TR.OWNER)), "big")
            if value >= generation:
                return
            self._esapi.nv_increment(self._nv, tpm.ESYS_TR.OWNER)
        value = int.from_bytes(bytes(self._esapi.nv_read(self._nv, 8, 0, tpm.ESYS_TR.OWNER)), "big")
        if value < generation:
            raise StoreError(f"TPM NV counter {self.nv_index:#x} is at {value}, far behind generation {generation}")
