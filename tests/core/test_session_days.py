"""Session dates of many bar starts at once equal ``session_date`` of each, through
daylight-saving changes and around midnight in New York."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.core.calendar import session_date, session_days


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(946_684_800, 1_900_000_000), min_size=1, max_size=300),
    st.booleans(),
)
def test_session_days_match_session_date(seconds, near_midnight) -> None:
    ts = np.sort(np.array(seconds, dtype=np.int64))
    if near_midnight:
        # 03:00-06:00 UTC: the hours where the offset decides the New York date.
        ts = ts - ts % 86_400 + 10_800 + ts % 10_800
    ts = np.sort(ts) * 1_000_000_000
    day, dates = session_days(ts)
    assert [dates[d] for d in day.tolist()] == [session_date(int(t)) for t in ts.tolist()]
    assert len(set(dates)) == len(dates)


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(
        [
            "2024-03-10",  # New York springs forward at 07:00 UTC
            "2024-11-03",  # and falls back at 06:00 UTC
            "2021-03-14",
            "2021-11-07",
            "2023-06-15",
            "2023-12-31",
        ]
    ),
    st.integers(1, 15),
)
def test_every_minute_of_the_hours_around_midnight_in_new_york(day: str, step: int) -> None:
    """Dense bars (unsorted days allowed) where the date depends on the offset."""
    start = int(np.datetime64(day, "s").astype(np.int64)) - 86_400
    minutes = np.arange(0, 3 * 1_440, step, dtype=np.int64)
    minutes = minutes[(minutes % 1_440 >= 3 * 60) & (minutes % 1_440 < 8 * 60)]
    ts = (start + minutes * 60) * 1_000_000_000
    ts = np.r_[ts, ts[:7]]  # and a replayed stretch: days need not come in order
    day_index, dates = session_days(ts)
    assert [dates[d] for d in day_index.tolist()] == [session_date(int(t)) for t in ts.tolist()]


def test_a_day_whose_offset_changed_within_the_hour_is_asked_bar_by_bar(monkeypatch) -> None:
    """Were the offset to change between 04:00 and 05:00 UTC (it does not in New York),
    each of that day's unsure bars would still get its own date."""
    from sovereign.core import calendar

    def fake(ts_ns: int) -> str:
        # A zone that moves from UTC-4 to UTC-5 at 04:30 UTC on every day.
        seconds = ts_ns // 1_000_000_000
        offset = 5 if seconds % 86_400 >= 4 * 3_600 + 1_800 else 4
        return str(np.datetime64(seconds - offset * 3_600, "s").astype("datetime64[D]"))

    monkeypatch.setattr(calendar, "session_date", fake)
    start = int(np.datetime64("2024-06-03", "s").astype(np.int64))
    ts = (start + np.arange(4 * 60, 5 * 60, dtype=np.int64) * 60) * 1_000_000_000
    day_index, dates = calendar.session_days(ts)
    assert [dates[d] for d in day_index.tolist()] == [fake(int(t)) for t in ts.tolist()]
    assert len(dates) == 2
