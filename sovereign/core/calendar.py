"""Exchange-calendar facts that pure logic needs (no clock reads)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

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


_NS_PER_MINUTE = 60_000_000_000
_MINUTES_PER_DAY = 1_440


def session_days(ts_ns: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``session_date`` of many bar starts at once: an index per bar into a list of the
    distinct dates, in order of first appearance.

    New York is always four or five hours behind UTC. Where both offsets give the same
    calendar day (every bar outside 04:00-05:00 UTC, that is all US trading hours), that
    is the date whatever daylight saving does; the other bars ask ``session_date``.
    """
    minute = ts_ns // _NS_PER_MINUTE
    edt = (minute - 240) // _MINUTES_PER_DAY
    est = (minute - 300) // _MINUTES_PER_DAY
    ordinal = edt.copy()
    unsure = np.flatnonzero(edt != est)
    names: dict[int, str] = {}

    def ask(i: int) -> int:
        text = session_date(int(ts_ns[i]))
        day = int(np.datetime64(text, "D").astype(np.int64))
        names[day] = text
        return day

    # The unsure bars of one UTC day fall in one hour (04:00-05:00 UTC), where New York's
    # offset does not change (it changes at 06:00 or 07:00 UTC): ask for the first and the
    # last of each day, and for every one of them only where those two disagree.
    utc_day = minute[unsure] // _MINUTES_PER_DAY
    starts = np.flatnonzero(np.r_[True, utc_day[1:] != utc_day[:-1]])[: unsure.size]
    ends = np.r_[starts[1:], unsure.size][: starts.size]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        rows = unsure[a:b]
        first, last = ask(int(rows[0])), ask(int(rows[-1]))
        if first == last:
            ordinal[rows] = first
        else:
            ordinal[rows] = [ask(i) for i in rows.tolist()]
    unique, first, inverse = np.unique(ordinal, return_index=True, return_inverse=True)
    by_appearance = np.argsort(first, kind="stable")
    rank = np.empty_like(by_appearance)
    rank[by_appearance] = np.arange(by_appearance.size)
    dates = [names.get(int(d)) or str(np.datetime64(int(d), "D")) for d in unique[by_appearance]]
    return rank[inverse].astype(np.int64), dates
