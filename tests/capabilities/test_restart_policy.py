"""The image's restart block (capabilities/restart.py): both forms, defaults, and errors naming file, line, field."""
from __future__ import annotations

import pytest

from capabilities.image import ImageError, parse_image
from capabilities.restart import RestartPolicy, parse_duration


def task(restart: str, extra: str = ""):
    text = f"name: t\ntasks:\n  a:\n    program: hello.ping_server\n    restart: {restart}\n{extra}"
    return parse_image(text, "t.yaml").task("a")


def problems(restart: str, extra: str = "") -> list[str]:
    with pytest.raises(ImageError) as info:
        task(restart, extra)
    return [f"{p.file}:{p.line}: {p.field}: {p.message}" for p in info.value.problems]


def test_the_long_form():
    t = task("{policy: always, backoff: {initial: 250ms, max: 2min, factor: 3}, intensity: {restarts: 7, period: 90s}}")
    assert t.restart == "always"
    assert t.restart_policy == RestartPolicy("always", 0.25, 120.0, 3.0, 7, 90.0, None)


def test_left_out_keys_take_the_defaults_and_the_short_form_means_every_default():
    assert task("{policy: on-failure}").restart_policy == RestartPolicy("on-failure")
    assert task("on-failure").restart_policy == RestartPolicy("on-failure")
    assert task("on-failure").restart_policy.intensity_restarts == 5  # no lifetime cap: a window instead


def test_restart_limit_keeps_its_old_meaning_with_the_short_form():
    p = task("on-failure", "    restart_limit: 2\n").restart_policy
    assert (p.backoff_initial_s, p.intensity_restarts, p.lifetime_limit) == (0.0, 0, 2)
    long = task("{policy: on-failure}", "    restart_limit: 4\n").restart_policy
    assert long.lifetime_limit == 4 and long.intensity_restarts == 5  # a cap on top of the window


@pytest.mark.parametrize("restart,where,message", [
    ("{backoff: {initial: 1s}}", "t.yaml:5: tasks.a.restart.policy", "missing required key 'policy'"),
    ("{policy: sometimes}", "t.yaml:5: tasks.a.restart.policy", "expected one of never, on-failure, always"),
    ("{policy: always, retries: 3}", "t.yaml:5: tasks.a.restart.retries", "unknown key 'retries'"),
    ("{policy: always, backoff: {factor: 0.5}}", "t.yaml:5: tasks.a.restart.backoff.factor",
     "expected a number from 1"),
    ("{policy: always, backoff: {initial: 10s, max: 1s}}", "t.yaml:5: tasks.a.restart.backoff.max",
     "the largest delay (1 s) is below the first one (10 s)"),
    ("{policy: always, intensity: {restarts: 0}}", "t.yaml:5: tasks.a.restart.intensity.restarts",
     "expected an integer >= 1"),
    ("{policy: always, intensity: {period: 0s}}", "t.yaml:5: tasks.a.restart.intensity.period",
     "expected a period > 0"),
    ("{policy: always, intensity: {period: 2days}}", "t.yaml:5: tasks.a.restart.intensity.period",
     "expected a duration such as"),
])
def test_errors_name_file_line_and_field(restart, where, message):
    found = problems(restart)
    assert len(found) == 1 and found[0].startswith(f"{where}: {message}"), found


def test_durations():
    assert parse_duration("1.5") == 1.5 and parse_duration("250ms") == 0.25 and parse_duration("2min") == 120
    with pytest.raises(ValueError):
        parse_duration("25h")
