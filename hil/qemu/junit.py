"""Per-test results from the guest: run pytest there with ``--junitxml``, bring the XML back over
the serial line, and read it as one outcome per guest test.

pytest's JUnit XML (``--junitxml``; https://docs.pytest.org/en/stable/how-to/output.html) names
each test by ``classname`` (the node id's path with ``/`` as ``.`` and without ``.py``, then any
class) and ``name`` (the function, with its parameter id); ``node_key`` turns a host node id
into that same pair, so the host can report each guest test under its own name.

Pure except for ``GuestSuite.run``, which drives a ``Machine``.
"""
from __future__ import annotations

import base64
import gzip
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from hil.qemu.errors import HarnessError


@dataclass(frozen=True)
class CaseResult:
    classname: str
    name: str
    outcome: str  # "passed", "failed", "error", "skipped"
    message: str = ""
    details: str = ""
    seconds: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return self.classname, self.name


def node_key(nodeid: str) -> tuple[str, str]:
    """``tests/a/test_b.py::TestC::test_d[x]`` -> ``("tests.a.test_b.TestC", "test_d[x]")``, as pytest's JUnit."""
    path, *rest = nodeid.split("::")
    module = path.removesuffix(".py").replace("/", ".")
    names = [module, *[r for r in rest if r != "()"]]
    return ".".join(names[:-1]), names[-1]


def parse(xml: bytes | str) -> list[CaseResult]:
    """Every ``<testcase>`` of a JUnit XML document."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise HarnessError("junit-unreadable", f"the guest's JUnit XML does not parse: {exc}") from None
    results = []
    for case in root.iter("testcase"):
        outcome, message, details = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = child.get("message", "")
                details = (child.text or "").strip()
                break
        results.append(CaseResult(case.get("classname", ""), case.get("name", ""), outcome, message, details,
                                  float(case.get("time", "0") or 0)))
    return results


def collect(args: tuple[str, ...], cwd: Path) -> list[str]:
    """The node ids pytest collects for ``args`` here (the guest runs the same source, so the same tests)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=cwd, capture_output=True, text=True)
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line]
    if proc.returncode != 0 or not ids:
        raise HarnessError("collect-failed", f"pytest --collect-only {shlex.join(args)} found nothing",
                           context=(proc.stdout + proc.stderr).splitlines()[-20:])
    return ids


def decode_transfer(text: str) -> bytes:
    """The guest sends ``gzip | base64``; tolerate line breaks and console noise around it."""
    blob = "".join(re.findall(r"[A-Za-z0-9+/=]+", text))
    try:
        return gzip.decompress(base64.b64decode(blob))
    except (ValueError, OSError, EOFError) as exc:
        raise HarnessError("junit-transfer-corrupt", f"the JUnit XML from the guest did not decode: {exc}") from None


@dataclass
class GuestSuite:
    """A pytest selection run inside the guest, with its results as ``CaseResult``s.

    ``args`` are pytest arguments (paths, ``-k``); ``budget_s`` is the unscaled budget of the
    whole in-guest run; the in-guest pytest-timeout is derived from it by the timeout model.
    """

    name: str
    args: tuple[str, ...]
    budget_s: float = 600.0

    def command(self, per_test_timeout_s: float, test_multiplier: float = 1.0) -> str:
        xml = f"/tmp/junit-{self.name}.xml"
        return (f"rm -f {xml}; L4EMU_TEST_TIMEOUT_MULTIPLIER={test_multiplier:g} python3 -m pytest -q "
                f"-p no:cacheprovider -o junit_family=xunit2 --junitxml={xml} --timeout={per_test_timeout_s:.0f} "
                f"{shlex.join(self.args)}")

    def fetch_command(self) -> str:
        return f"gzip -c /tmp/junit-{self.name}.xml | base64"

    def run(self, machine, record=None) -> tuple[int, str, list[CaseResult]]:
        """Run in ``machine``; returns pytest's status, its console output and the per-test results."""
        timeouts = machine.timeouts
        per_test = timeouts.guest_pytest_timeout(self.budget_s)
        out, status = machine.run(self.command(per_test, timeouts.guest_test_multiplier()), timeout=self.budget_s)
        blob, fetched = machine.run(self.fetch_command(), timeout=timeouts.interrupt_s * 6)
        if fetched != 0:
            raise HarnessError("junit-missing", f"pytest in the guest wrote no JUnit XML (status {status})",
                               context=out.splitlines()[-25:])
        try:
            xml = decode_transfer(blob)
            results = parse(xml)
        except HarnessError as exc:  # say what pytest itself said: its status and its last lines
            raise HarnessError(exc.reference, f"{exc.message}; pytest in the guest exited with status {status}",
                               context=out.splitlines()[-25:]) from None
        if record is not None:
            record.junit(self.name, xml)
        return status, out, results
