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
