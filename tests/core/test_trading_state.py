"""The trading-state machine: ACTIVE / NO_NEW_POSITIONS / HALTED."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.core.constitution import Constitution
from sovereign.core.guardian import GuardianState, TradingState, TradingStateMachine, resume

C = Constitution()


def machine(equity: float = 100_000.0, **kw: int) -> TradingStateMachine:
    return TradingStateMachine(C, GuardianState.fresh(equity), **kw)


def test_a_three_percent_day_stops_new_positions_until_the_next_session() -> None:
    m = machine()
    assert m.observe(99_000, "2024-01-02", 1) == []
    (t,) = m.observe(96_900, "2024-01-02", 2)  # -3.1 % since the day's start
    assert t.state is TradingState.NO_NEW_POSITIONS and t.previous is TradingState.ACTIVE
    assert m.entry_refusal()[0] == "DAILY_LOSS_LIMIT"  # type: ignore[index]
    assert m.observe(96_000, "2024-01-02", 3) == []  # still the same day
    (back,) = m.observe(96_100, "2024-01-03", 4)
    assert back.state is TradingState.ACTIVE and "new session" in back.reason
    assert m.s.day_start_equity == 96_000  # the previous session's close
    assert m.entry_refusal() is None


def test_an_overnight_gap_counts_against_the_new_day() -> None:
    m = machine()
    m.observe(100_000, "2024-01-02", 1)
    (t,) = m.observe(96_500, "2024-01-03", 2)  # gap down 3.5 % at the open
    assert t.state is TradingState.NO_NEW_POSITIONS


def test_drawdown_beyond_ten_percent_halts_and_only_resume_leaves() -> None:
    m = machine()
    m.observe(110_000, "2024-01-02", 1)
    m.observe(110_000, "2024-01-02", 2)  # held: the new high-water mark
    m.observe(108_000, "2024-01-03", 3)
    (t,) = m.observe(98_000, "2024-01-04", 4)  # 10.9 % below 110k
    assert t.state is TradingState.HALTED
    assert m.s.halted_reason.startswith("drawdown 10.91%")
    # Recovery does not un-halt, nor does a new session.
    assert m.observe(120_000, "2024-01-05", 5) == []
    assert m.state is TradingState.HALTED
    assert m.entry_refusal()[0] == "HALTED"  # type: ignore[index]
    record = resume(m.s, reason="reviewed the crash", operator="ops", ts=6)
    assert m.state is TradingState.ACTIVE
    assert record["high_water_mark_before"] == 110_000  # 120k was never held
    assert m.s.high_water_mark == m.s.last_equity == 120_000
    assert len(m.s.resumed) == 1


def test_resume_needs_a_reason_and_a_halt() -> None:
    m = machine()
    with pytest.raises(ValueError, match="not HALTED"):
        resume(m.s, reason="why not", operator="ops", ts=1)
    m.observe(80_000, "2024-01-02", 1)
    with pytest.raises(ValueError, match="reason"):
        resume(m.s, reason="  ", operator="ops", ts=1)


def test_non_finite_equity_halts() -> None:
    m = machine()
    (t,) = m.observe(math.nan, "2024-01-02", 1)
    assert t.state is TradingState.HALTED


def test_losing_streak_asks_for_a_rule_evaluation_every_n_losses() -> None:
    m = machine(review_after_losses=3)
    asks = [m.on_trade_closed(p) for p in (-1, -1, 5, -1, -1, -1, -1, -1, -1)]
    assert asks == [False, False, False, False, False, True, False, False, True]


def test_state_document_round_trips_and_rejects_nonsense() -> None:
    m = machine()
    m.observe(50_000, "2024-01-02", 1)
    doc = m.s.to_dict()
    assert GuardianState.from_dict(doc) == m.s
    with pytest.raises(ValueError, match="not a trading state"):
        GuardianState.from_dict({**doc, "state": "YOLO"})


@settings(max_examples=300)
@given(st.lists(st.tuples(st.floats(0.5, 1.5), st.integers(0, 3)), min_size=1, max_size=60))
def test_halted_is_absorbing_and_states_follow_the_limits(path: list[tuple[float, int]]) -> None:
    m = machine()
    equity, day = 100_000.0, 0
    halted = False
    for factor, new_days in path:
        equity *= factor
        day += new_days
        m.observe(equity, f"2024-02-{1 + day % 28:02d}-{day}", day)
        if halted:
            assert m.state is TradingState.HALTED
        halted = m.state is TradingState.HALTED
        dd = 1 - equity / m.s.high_water_mark
        if dd > C.max_drawdown:
            assert halted
        if m.state is TradingState.ACTIVE:
            assert 1 - equity / m.s.day_start_equity <= C.max_daily_loss + 1e-12


def test_a_one_bar_spike_sets_no_high_water_mark() -> None:
    """A bad print (a price x1000 for one bar, then back) lifts equity for one observation:
    the high-water mark counts equity only as far as the next observation holds it, so
    the true bar after the spike is no phantom drawdown."""
    m = machine()
    m.observe(100_000, "2024-01-02", 1)
    m.observe(100_000, "2024-01-02", 2)
    assert m.observe(5_000_000, "2024-01-02", 3) == []  # the spike
    assert m.s.high_water_mark == 100_000
    assert m.observe(100_500, "2024-01-02", 4) == []  # straight back: no halt
    assert m.state is TradingState.ACTIVE and m.s.high_water_mark == 100_500
    # A real rise counts one observation later, as soon as it holds.
    m.observe(104_000, "2024-01-02", 5)
    m.observe(104_500, "2024-01-02", 6)
    assert m.s.high_water_mark == 104_000
