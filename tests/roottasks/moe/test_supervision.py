"""Moe's restart decisions (roottasks/moe/supervision.py): pure, the clock is a number the test passes."""
import pytest

from capabilities.restart import RestartPolicy, legacy
from roottasks.moe import supervision as sv

POLICY = RestartPolicy("on-failure", backoff_initial_s=0.5, backoff_max_s=4.0, backoff_factor=2.0,
                       intensity_restarts=4, intensity_period_s=60.0)


def crash_loop(policy, times, code=1):
    """Exit with ``code`` at each time in ``times``; restart whenever told. The decisions in order."""
    state = sv.SupervisionState()
    out = []
    for now in times:
        d = sv.after_exit(policy, state, code, now)
        sv.apply(state, d)
        out.append(d)
        if isinstance(d, sv.Restart):
            sv.started(state, d.at, policy)
    return state, out


def test_the_delay_doubles_while_the_task_keeps_failing_and_is_capped():
    state, decisions = crash_loop(POLICY, [0, 1, 2, 4, 8])
    assert [d.delay for d in decisions[:4]] == [0.5, 1.0, 2.0, 4.0]
    assert isinstance(decisions[4], sv.GiveUp)  # the fifth failure within 60 s: more than 4 restarts
    assert "4 restarts within 60 s" in decisions[4].reason
    assert state.restarts == 4 and state.generation == 5
    capped = RestartPolicy("always", 1.0, 3.0, 10.0, 100, 60.0)
    _, ds = crash_loop(capped, [0, 10, 20, 30])
    assert [d.delay for d in ds] == [1.0, 3.0, 3.0, 3.0]


def test_the_window_forgets_old_restarts_so_a_task_that_ran_well_restarts_fast_again():
    state, decisions = crash_loop(POLICY, [0, 1, 2, 100, 101])
    assert all(isinstance(d, sv.Restart) for d in decisions)
    # at 100 s the restarts made at ~0.5..5 s are out of the 60 s period: back to the first delay
    assert [d.delay for d in decisions] == [0.5, 1.0, 2.0, 0.5, 1.0]
    assert [d.in_window for d in decisions] == [0, 1, 2, 0, 1]
    assert len(state.history) == 2  # only what the window can still count is kept


def test_policies_decide_by_exit_status():
    for policy, code, restarts in (("never", 1, False), ("on-failure", 0, False), ("on-failure", 137, True),
                                   ("always", 0, True)):
        d = sv.after_exit(RestartPolicy(policy), sv.SupervisionState(), code, 0.0)
        assert isinstance(d, sv.Restart) == restarts, (policy, code)
        if not restarts:
            assert isinstance(d, sv.Finished)


def test_the_legacy_limit_restarts_at_once_and_keeps_its_words():
    policy = legacy("on-failure", 2)
    state, decisions = crash_loop(policy, [0, 0, 0])
    assert [type(d) for d in decisions] == [sv.Restart, sv.Restart, sv.GiveUp]
    assert [d.delay for d in decisions[:2]] == [0, 0]
    words = [sv.message("evil", "exited", 1, policy, d) for d in decisions]
    assert words == ["evil exited (1); restart 1 of 2", "evil exited (1); restart 2 of 2", "evil exited with status 1"]


def test_a_lifetime_limit_on_top_of_the_window():
    policy = RestartPolicy("on-failure", 0.1, 1.0, 2.0, 100, 1.0, lifetime_limit=2)
    _, decisions = crash_loop(policy, [0, 10, 20])
    assert isinstance(decisions[2], sv.GiveUp) and "limit 2" in decisions[2].reason


def test_due_and_apply():
    state = sv.SupervisionState()
    d = sv.after_exit(POLICY, state, 1, 10.0)
    sv.apply(state, d)
    assert state.next_attempt == pytest.approx(10.5)
    assert not sv.due(state, 10.4) and sv.due(state, 10.5)
    sv.started(state, 10.5)
    assert state.next_attempt is None and state.generation == 2
