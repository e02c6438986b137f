"""The three key-storage backends in a booted, fully confined system.

The crypto task runs as its own process (own uid when root, own network namespace, read-only
filesystem but its work directory, seccomp); the boot's device module starts its swtpm (reached
through the FIFO relay: the task may not open sockets) or its SoftHSM2 token. Keys, and the
replay window, survive a reboot of the system.
"""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from capabilities.image import WORKDIR_BYTES, WORKDIR_FILES
from kernel_model.host import workdirs
from kernel_model.host.images import load_image
from kernel_model.host.keystore_devices import keystore_devices
from protocols import crypto as p
from protocols.crypto import KeyFormat, KeyType, Status, Usage

KEY = bytes(range(32))

STORAGE = {
    "file": ("{}", "{backend: file, path: keys.store, kek_rom: kek}"),
    "tpm": ("{swtpm: {}}", "{backend: tpm, path: keys.store, tcti: 'fifo:tpm'}"),
    "hsm": ("{softhsm2: {label: e2e, pin_module: pin}}",
            "{backend: hsm, path: keys.store, module: /usr/lib/softhsm/libsofthsm2.so, token_label: e2e, "
            "pin_rom: pin, softhsm2_conf: softhsm/softhsm2.conf}"),
}


def image(backend: str) -> str:
    devices, storage = STORAGE[backend]
    return textwrap.dedent(f"""
        name: crypto-{backend}
        run: {{until: [client]}}
        modules: {{script: script.json, kek: kek.bin, pin: hsm.pin}}
        objects:
          crypto: {{type: gate}}
          crypto_shm: {{type: dataspace, size: 160KiB}}
        tasks:
          crypto:
            program: crypto_service.task
            config:
              devices: {devices}
              clients: {{client: {{gate: crypto, shm: crypto_shm}}}}
              service:
                rate_limit: {{enabled: false}}
                storage: {storage}
            caps: {{crypto: "crypto:svr", crypto_shm: "crypto_shm:rw", rom: "rom:r"}}
          client:
            program: testing.crypto_probe
            args: [script]
            caps: {{crypto: "crypto:rw", crypto_shm: "crypto_shm:rw", rom: "rom:r"}}
        """)


def crypto_files(tmp_path: Path, name: str = "files") -> Path:
    """The crypto task's work-dir files (a copy out of its filesystem image, or the plain dir)."""
    dest = tmp_path / name
    shutil.rmtree(dest, ignore_errors=True)
    return workdirs.export_files(tmp_path / "run" / "crypto", dest)


def put_crypto_files(tmp_path: Path, files: Path) -> None:
    """Replace the crypto task's work-dir files with ``files`` (a damaged store, as a disk would)."""
    workdir = tmp_path / "run" / "crypto"
    if workdirs.image_for(workdir).exists():
        workdirs.import_files(files, workdir, WORKDIR_BYTES, WORKDIR_FILES)
    else:
        shutil.copytree(files, workdir, dirs_exist_ok=True)


def run(boot: Any, tmp_path: Path, backend: str, frames: list[bytes]) -> tuple[Any, list[dict]]:
    path = tmp_path / "image.yaml"
    path.write_text(image(backend))
    (tmp_path / "script.json").write_text(json.dumps([{"hex": f.hex()} for f in frames]))
    if not (tmp_path / "kek.bin").exists():
        (tmp_path / "kek.bin").write_bytes(bytes(range(100, 132)))
        (tmp_path / "hsm.pin").write_text("4321\n")
    lines: list[str] = []
    with keystore_devices(load_image(path), tmp_path / "run", lines.append):
        system = boot(path)
        code = system.run(timeout=180)
        text = system.console.text()
        system.sup.shutdown()
    assert code == 0, text
    return system, system.results("client")


@pytest.mark.parametrize("backend", ["file", "tpm", "hsm"])
def test_keys_and_replay_window_survive_a_reboot_confined(boot: Any, tmp_path: Path, backend: str) -> None:
    first = [
        p.KeyImportRequest(9, KeyType.AES_256, Usage(0), KeyFormat.SECRET, KEY).encode(),
        p.KeyGenerateRequest(10, KeyType.MLDSA_44).encode(),
        p.AesEncryptRequest(9, b"hdr", b"across reboots").encode(),
    ]
    system, results = run(boot, tmp_path, backend, first)
    assert [r["status"] for r in results] == [Status.SUCCESS] * 3, system.console.text()
    enc = p.parse_response(bytes.fromhex(results[2]["response"]), p.RequestType.AES_ENCRYPT)[1]
    if backend != "file":  # confined as the machine allows: the first task's boot line says what
        assert "crypto" in system.console.text()
    stored = (crypto_files(tmp_path) / "keys.store.client").read_bytes()
    assert KEY not in stored
    dec = p.AesDecryptRequest(9, b"hdr", enc.nonce, enc.ciphertext, enc.tag).encode()
    bad_sig = p.MldsaVerifyRequest(10, b"", bytes(2420), b"m").encode()  # the key is there: a verdict
    second = [dec, dec, bad_sig, p.KeyListRequest(0).encode()]
    system, results = run(boot, tmp_path, backend, second)  # reboot: same run directory
    assert [r["status"] for r in results] == [Status.SUCCESS, Status.NONCE_REUSE, Status.INVALID_SIGNATURE,
                                              Status.SUCCESS]
    listed = p.parse_response(bytes.fromhex(results[3]["response"]), p.RequestType.KEY_LIST)[1]
    assert [k.key_id for k in listed.keys] == [9, 10]
    assert bytes.fromhex(results[0]["response"])[8:] == b"across reboots"
    third = [dec]
    system, results = run(boot, tmp_path, backend, third)
    assert results[0]["status"] == Status.NONCE_REUSE  # the journal, not luck


def test_tpm_down_at_boot_gives_storage_error_not_a_hang(boot: Any, tmp_path: Path) -> None:
    """The relay answers 'unreachable' when swtpm is gone: clients get STORAGE_ERROR at once."""
    path = tmp_path / "image.yaml"
    path.write_text(image("tpm"))
    (tmp_path / "kek.bin").write_bytes(bytes(32))
    (tmp_path / "hsm.pin").write_text("1")
    (tmp_path / "script.json").write_text(json.dumps([{"hex": p.KeyListRequest(0).encode().hex()}]))
    from kernel_model.host.keystore_devices import FifoRelay

    relay = FifoRelay(tmp_path / "run" / "crypto" / "tpm", tmp_path / "nowhere.sock").start()
    try:
        system = boot(path)
        code = system.run(timeout=180)
    finally:
        relay.stop()
    assert code == 0, system.console.text()
    assert [r["status"] for r in system.results("client")] == [Status.STORAGE_ERROR]
    assert "TPM" in system.console.text() and "STORAGE" in system.console.text()


def test_corrupt_store_in_a_booted_system_is_a_status_not_a_timeout(boot: Any, tmp_path: Path) -> None:
    frames = [p.KeyImportRequest(9, KeyType.AES_256, Usage(0), KeyFormat.SECRET, KEY).encode()]
    run(boot, tmp_path, "file", frames)
    files = crypto_files(tmp_path)
    store = files / "keys.store.client"
    damaged = bytearray(store.read_bytes())
    damaged[-3] ^= 0x10
    store.write_bytes(bytes(damaged))
    put_crypto_files(tmp_path, files)
    system, results = run(boot, tmp_path, "file", [p.AesEncryptRequest(9, b"", b"x").encode()])
    assert [r["status"] for r in results] == [Status.STORAGE_ERROR]
    assert "modified" in system.console.text() and "STORAGE" in system.console.text()
    # the evidence is kept, nothing written over it
    assert (crypto_files(tmp_path, "after") / "keys.store.client").read_bytes() == bytes(damaged)


def test_relay_and_tcti_agree_on_framing() -> None:
    from kernel_model.host import keystore_devices
    from tasks.crypto_service import keystore_tpm

    assert keystore_devices.RELAY_UNREACHABLE == keystore_tpm.RELAY_UNREACHABLE
    assert keystore_devices.MAX_TPM_FRAME == keystore_tpm.MAX_RESPONSE


TWO_CLIENTS = """
name: crypto-two
run: {until: [client]}
modules: {script: script.json, kek: kek.bin}
objects:
  crypto: {type: gate}
  crypto_shm: {type: dataspace, size: 160KiB}
  crypto_b: {type: gate}
  crypto_b_shm: {type: dataspace, size: 160KiB}
tasks:
  crypto:
    program: crypto_service.task
    config:
      clients: {alice: {gate: crypto, shm: crypto_shm}, bob: {gate: crypto_b, shm: crypto_b_shm}}
      service:
        rate_limit: {enabled: false}
        storage: {backend: file, path: keys.store, kek_rom: kek}
    caps: {crypto: "crypto:svr", crypto_shm: "crypto_shm:rw", crypto_b: "crypto_b:svr",
           crypto_b_shm: "crypto_b_shm:rw", rom: "rom:r"}
  client:
    program: testing.crypto_probe
    args: [script]
    caps: {crypto: "crypto:rw", crypto_shm: "crypto_shm:rw", crypto_b: "crypto_b:rw",
           crypto_b_shm: "crypto_b_shm:rw", rom: "rom:r"}
"""


def test_one_clients_damaged_store_fails_only_that_client_in_a_booted_system(boot: Any, tmp_path: Path) -> None:
    """Issue 16 item 2: the service starts, answers STORAGE_ERROR to the client whose store is
    damaged (with a log line naming it) and serves the other client."""
    path = tmp_path / "image.yaml"
    path.write_text(TWO_CLIENTS)
    (tmp_path / "kek.bin").write_bytes(bytes(range(100, 132)))
    imp = p.KeyImportRequest(9, KeyType.AES_256, Usage(0), KeyFormat.SECRET, KEY).encode().hex()
    listing = p.KeyListRequest(0).encode().hex()

    def run_script(entries: list[dict]) -> tuple[str, list[dict]]:
        (tmp_path / "script.json").write_text(json.dumps(entries))
        system = boot(path)
        code = system.run(timeout=180)
        text = system.console.text()
        system.sup.shutdown()
        assert code == 0, text
        return text, system.results("client")

    _, results = run_script([{"hex": imp}, {"hex": imp, "via": "crypto_b"}])
    assert [r["status"] for r in results] == [Status.SUCCESS, Status.SUCCESS]
    files = crypto_files(tmp_path)
    damaged = bytearray((files / "keys.store.alice").read_bytes())
    damaged[40] ^= 1
    (files / "keys.store.alice").write_bytes(bytes(damaged))
    put_crypto_files(tmp_path, files)
    text, results = run_script([{"hex": listing}, {"hex": listing, "via": "crypto_b"}])
    assert [r["status"] for r in results] == [Status.STORAGE_ERROR, Status.SUCCESS], text
    listed = p.parse_response(bytes.fromhex(results[1]["response"]), p.RequestType.KEY_LIST)[1]
    assert [k.key_id for k in listed.keys] == [9]
    assert "[alice] key store UNAVAILABLE" in text and "keys.store.alice" in text
    assert "[bob] key store loaded: 1 key(s)" in text
