"""Which key store a crypto-service client gets: the ``"storage"`` section of config.json, strictly.

``memory`` and ``file`` (``keystore``), ``tpm`` (``keystore_tpm``) and ``hsm`` (``keystore_hsm``);
the device backends are imported only when chosen (their libraries are optional). This module sits
above all of them, so none of them imports another's factory.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from durable.fileops import OS, FileOps

from .keystore import FileKeyStore, KeyStore, MemoryKeyStore, Rng, load_kek

_COMMON = {"backend", "path", "must_exist", "required"}


def _strict(cfg: Mapping[str, Any], allowed: set[str], required: tuple[str, ...]) -> None:
    unknown = set(cfg) - allowed - _COMMON
    if unknown:
        raise ValueError(f"storage: unknown key(s) {sorted(unknown)} for the {cfg.get('backend')} backend")
    for name in ("path", *required):
        if not isinstance(cfg.get(name), str):
            raise ValueError(f"storage.{name} is required (a string)")
    for name in ("must_exist", "required"):
        if name in cfg and not isinstance(cfg[name], bool):
            raise ValueError(f"storage.{name} must be true or false")


def open_keystore(
    storage: Mapping[str, Any] | None,
    rng: Rng = os.urandom,
    *,
    kek: bytearray | None = None,
    pin: str | None = None,
    ops: FileOps = OS,
) -> KeyStore:
    """Backend from the ``"storage"`` section of config.json (strict keys).

    ``kek`` / ``pin``: secrets the task read from boot modules (``kek_rom``,
    ``pin_rom``); they stand in for ``kek_file`` / ``pin_file``. Opening does
    not touch a device: ``load`` does (and reports what is wrong). ``ops``: the file
    operations every store file goes through (``durable.faults.FaultyOps`` in tests).
    ``required`` is a synonym of ``must_exist``."""
    cfg = dict(storage) if storage is not None else {"backend": "memory"}
    backend = cfg.get("backend")
    must_exist = bool(cfg.get("must_exist", False)) or bool(cfg.get("required", False))
    if backend == "memory":
        if set(cfg) - {"backend"}:
            raise ValueError(f"storage: unknown key(s) {sorted(set(cfg) - {'backend'})} for the memory backend")
        return MemoryKeyStore()
    if backend == "file":
        _strict(cfg, {"kek_file"}, () if kek is not None else ("kek_file",))
        key = kek if kek is not None else load_kek(cfg["kek_file"])
        return FileKeyStore(cfg["path"], key, rng, must_exist=must_exist, ops=ops)
    if backend == "tpm":
        _strict(cfg, {"tcti", "nv_index"}, ("tcti",))
        from .keystore_tpm import TpmKeyStore

        nv_index = cfg.get("nv_index")
        if nv_index is not None and (isinstance(nv_index, bool) or not isinstance(nv_index, int)):
            raise ValueError("storage.nv_index must be an integer (an owner NV index, 0x01000000..0x01FFFFFF)")
        return TpmKeyStore(cfg["path"], cfg["tcti"], rng, nv_index=nv_index, must_exist=must_exist, ops=ops)
    if backend == "hsm":
        _strict(cfg, {"module", "token_label", "pin_file", "softhsm2_conf"}, ("module", "token_label"))
        if pin is None:
            if not isinstance(cfg.get("pin_file"), str):
                raise ValueError("storage.pin_file is required (or pin_rom in the task config)")
            pin = Path(cfg["pin_file"]).read_text().strip()
        from .keystore_hsm import HsmKeyStore

        return HsmKeyStore(cfg["path"], cfg["module"], cfg["token_label"], pin, rng,
                           softhsm2_conf=cfg.get("softhsm2_conf"), must_exist=must_exist, ops=ops)
    raise ValueError(f"storage.backend must be 'file', 'tpm', 'hsm' or 'memory', not {backend!r}")
