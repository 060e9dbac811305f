"""One duration parser used everywhere: ``"5s"``, ``"1m"``, ``timedelta``, int milliseconds."""

from __future__ import annotations

import re
from datetime import timedelta

from sluice.errors import ConfigError

Duration = str | int | float | timedelta

_UNITS_MS = {
    "ms": 1,
    "s": 1_000,
    "sec": 1_000,
    "m": 60_000,
    "min": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h|d)")


def parse_duration(value: Duration, *, what: str = "duration", allow_zero: bool = True) -> int:
    """Return ``value`` as integer milliseconds.

    Accepts ``"250ms"``, ``"5s"``, ``"1m30s"``, ``"2h"``, ``"7d"``, a
    :class:`~datetime.timedelta`, or a number of milliseconds.

    >>> parse_duration("1m30s")
    90000
    >>> parse_duration(timedelta(seconds=2))
    2000
    >>> parse_duration(15)
    15
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a duration like '5s', got {value!r}")
    if isinstance(value, timedelta):
        ms = round(value.total_seconds() * 1000)
    elif isinstance(value, int | float):
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        pos = 0
        ms_f = 0.0
        for m in _PART.finditer(text):
            if m.start() != pos:
                break
            ms_f += float(m.group(1)) * _UNITS_MS[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ConfigError(
                f"{what}: cannot parse {value!r}; use e.g. '250ms', '5s', '1m', '2h', '7d', "
                "a timedelta or integer milliseconds"
            )
        ms = round(ms_f)
    else:
        raise ConfigError(f"{what}: expected a duration like '5s', got {type(value).__name__}")
    if ms < 0 or (ms == 0 and not allow_zero):
        raise ConfigError(f"{what}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return ms
