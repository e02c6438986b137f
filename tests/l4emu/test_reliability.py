"""The reliability scenario, short (``make reliability`` runs the long one): chaos under load loses nothing."""
from __future__ import annotations

from l4emu import reliability
from l4emu.reliability import Row, rows, run_scenario


def test_chaos_under_load_loses_nothing(tmp_path):
    outcome = run_scenario(seed=3, faults=2, clients=2, requests=150, guard_s=240, work=tmp_path)
    table = rows(outcome)
    assert [r for r in table if not r.ok] == [], (
        "\n".join(map(str, table)) + "\n" + "\n".join(outcome.console.lines[-30:]))
    assert outcome.chaos.injected == 2 and outcome.chaos.recovered() == 2
    # the checks really look: a store that lost an answered count fails its row
    outcome.store = dict(outcome.store, value=0)
    assert not all(r.ok for r in reliability.durable(outcome))


def test_the_table_is_extensible():
    extra = lambda outcome: [Row("crash points", "12 of 12", "12", True)]  # noqa: E731 - what a later check adds
    reliability.CHECKS.append(extra)
    try:
        assert extra in reliability.CHECKS
    finally:
        reliability.CHECKS.remove(extra)
