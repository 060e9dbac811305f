from datetime import timedelta

import pytest

from sluice import ConfigError, parse_duration


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("5s", 5000),
        ("1m", 60000),
        ("1m30s", 90000),
        ("250ms", 250),
        ("2h", 7_200_000),
        ("7d", 604_800_000),
        (timedelta(seconds=1.5), 1500),
        (42, 42),
        ("1.5s", 1500),
    ],
)
def test_parse(value, ms):
    assert parse_duration(value) == ms


@pytest.mark.parametrize("bad", ["5 parsecs", "", "s5", "-1s", True, None])
def test_bad_durations_name_the_problem(bad):
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(bad)
