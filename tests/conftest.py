"""Shared fixtures (helpers live in tests/systemlib.py, importable as ``systemlib``)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the HIL guest ships pytest without hypothesis (its suites need none)
    settings = None  # type: ignore[assignment]

from kernel_model.host.console import RecordingConsole
from kernel_model.host.images import load_image
from kernel_model.host.supervisor import Supervisor
from systemlib import System

# Property tests judge results, never speed: no per-example deadline and no "too slow" health
# check, both of which fail on a loaded 2-core CI machine although nothing is wrong.
if settings is not None:
    settings.register_profile("l4emu", deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("l4emu")


@pytest.fixture
def boot(tmp_path):
    """``boot(yaml_text_or_path, files={...}) -> System`` (shut down after the test)."""
    systems: list[Supervisor] = []

    def _boot(image: str | Path, files: dict[str, str] | None = None, *, confine: bool = True) -> System:
        if isinstance(image, Path):
            path = image
        else:
            path = tmp_path / "image.yaml"
            path.write_text(textwrap.dedent(image))
            for name, content in (files or {}).items():
                (tmp_path / name).write_text(content)
        console = RecordingConsole()
        from kernel_model.host.confinement import policy_for
        sup = Supervisor(load_image(path), console, confinement=policy_for if confine else None,
                         run_dir=tmp_path / "run")
        systems.append(sup)
        sup.start()
        return System(sup, console)

    yield _boot
    for sup in systems:
        sup.shutdown()
