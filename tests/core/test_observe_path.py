"""Observing a chunk's equity path at once is observing it snapshot by snapshot: the same
state to the last bit when nothing moves the trading state, and the same first snapshot
that moves it otherwise."""

from __future__ import annotations

import copy

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.core.constitution import Constitution
from sovereign.core.guardian import GuardianState, TradingState, TradingStateMachine

C = Constitution()


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 60))
    start = draw(st.floats(50_000, 200_000))
    steps = draw(st.lists(st.floats(-0.02, 0.02, allow_nan=False), min_size=n, max_size=n))
    equity = start * np.exp(np.cumsum(steps))
    if draw(st.booleans()):
        equity[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    dates = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
    day = np.searchsorted(np.array(cuts), np.arange(n), side="right").astype(np.int64)
    day = np.minimum(day, len(dates) - 1)
    state = draw(st.sampled_from([s.value for s in TradingState]))
    prior_date = draw(st.sampled_from(["", "2024-01-01", "2024-01-02"]))
    fresh = GuardianState(
        state=state,
        high_water_mark=draw(st.floats(0, 250_000)),
        day_start_equity=draw(st.sampled_from([0.0, start, start * 1.02])),
        session_date=prior_date,
        last_equity=draw(st.floats(50_000, 200_000)),
        worst_drawdown=draw(st.floats(0, 0.09)),
    )
    return equity, day, dates, fresh


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_a_path_observed_at_once_is_the_path_observed_one_by_one(scenario) -> None:
    equity, day, dates, state = scenario
    one = TradingStateMachine(C, copy.deepcopy(state))
    first = -1
    for i, e in enumerate(equity.tolist()):
        if one.observe(e, dates[int(day[i])], i):
            first = i
            break
    path = TradingStateMachine(C, copy.deepcopy(state))
    got = path.observe_path(equity, day, dates)
    if got < 0:
        assert first < 0
        assert path.s.to_dict() == one.s.to_dict()
        return
    assert path.s.to_dict() == state.to_dict()  # untouched
    # The first snapshot that moves the state, or a non-finite one before it, which the
    # path leaves to the one-by-one observation.
    assert got == first or (not np.isfinite(equity[got]) and (first < 0 or got < first))
