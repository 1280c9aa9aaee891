"""Exchange-calendar facts that pure logic needs (no clock reads)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")


@lru_cache(maxsize=4096)
def _date_of_minute(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, tz=UTC).astimezone(NEW_YORK).date().isoformat()


def session_date(ts_ns: int) -> str:
    """The New York trading date (YYYY-MM-DD) of a bar that starts at ``ts_ns``."""
    return _date_of_minute(ts_ns // 60_000_000_000)


def new_york_time(ts_ns: int) -> tuple[int, int]:
    """Minute of the day and weekday (Monday = 0) of a time in New York."""
    local = datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).astimezone(NEW_YORK)
    return local.hour * 60 + local.minute, local.weekday()
