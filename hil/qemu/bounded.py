"""A run of images/wvds.yaml that ends by itself: for HIL tests and the HIL bench.

images/wvds.yaml runs until Ctrl-C: its gateway seals sensor batches for ever (``outbox.batches``
unset). A run that must end -- a test, a benchmark -- boots a copy beside it whose gateway stops
after ``batches`` batches; the image's ``run: {until: [gateway]}`` then stops the system with the
gateway's status. Everything else is the image as shipped (same modules, same tasks, same rights).

    python3 -m hil.qemu.bounded images/wvds.yaml images/.wvds-bounded.yaml 1   # in the guest too
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

BOUNDED_WVDS = "images/.wvds-bounded.yaml"  #: beside the original, so its relative module paths hold


def bounded(doc: dict, batches: int) -> dict:
    """``doc`` with its gateway's outbox stopping after ``batches`` batches."""
    if batches < 1:
        raise ValueError("batches must be at least 1")
    out = copy.deepcopy(doc)
    config = out["tasks"]["gateway"].setdefault("config", {})
    config["outbox"] = {**config.get("outbox", {}), "batches": batches}
    return out


def write(source: Path, dest: Path, batches: int) -> Path:
    doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    dest.write_text(yaml.safe_dump(bounded(doc, batches), sort_keys=False), encoding="utf-8")
    return dest


def command(batches: int = 1, source: str = "images/wvds.yaml", dest: str = BOUNDED_WVDS) -> str:
    """The shell command that writes the bounded copy (run from the project's root)."""
    return f"python3 -m hil.qemu.bounded {source} {dest} {batches}"


if __name__ == "__main__":
    write(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
