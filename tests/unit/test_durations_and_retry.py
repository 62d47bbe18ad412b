"""Durations and the retry policy: pure decisions, checked exactly."""

from __future__ import annotations

import random

import pytest

from nonstop import ConfigError, Retry, StepFailed
from nonstop.policies.durations import seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("7", 7.0),
    ],
)
def test_durations_read_as_people_write_them(text: float | str, expected: float) -> None:
    assert seconds(text) == expected


@pytest.mark.parametrize("bad", ["", "5 minutes", "-1s", -3, "1w", True])
def test_bad_durations_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError):
        seconds(bad)  # type: ignore[arg-type]


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = Retry(max_attempts=10, initial=1, factor=2, max_delay=10, jitter=False)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_full_jitter_stays_between_zero_and_the_backoff() -> None:
    policy = Retry(max_attempts=10, initial=1, factor=2, max_delay=100, jitter=True)
    rng = random.Random(7)
    delays = [policy.delay(4, rng) for _ in range(2000)]
    assert all(0 <= d <= 8 for d in delays)
    assert min(delays) < 1 and max(delays) > 7  # spread over the whole range


def test_attempts_and_give_up_on() -> None:
    policy = Retry(max_attempts=3, give_up_on=(KeyError,))
    assert policy.should_retry(ValueError(), 1)
    assert policy.should_retry(ValueError(), 2)
    assert not policy.should_retry(ValueError(), 3)
    assert not policy.should_retry(KeyError(), 1)


def test_give_up_on_matches_a_replayed_step_error_by_type_name() -> None:
    policy = Retry(max_attempts=3, give_up_on=(KeyError,))
    assert not policy.should_retry(StepFailed("builtins.KeyError", "x"), 1)
    assert policy.should_retry(StepFailed("builtins.ValueError", "x"), 1)


def test_invalid_policies_are_rejected() -> None:
    with pytest.raises(ConfigError):
        Retry(max_attempts=0)
    with pytest.raises(ConfigError):
        Retry(factor=0.5)
