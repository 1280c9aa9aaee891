"""The shard's baseline strategy: entries, exits, and the trade book."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.config import StrategyConfig
from sovereign.core.signals import ORPHAN_GRACE_BARS, ShardStrategy
from sovereign.core.universe import Universe
from sovereign.messages import REGIME_NAMES

UP = REGIME_NAMES.index("TrendingUp")
RANGE = REGIME_NAMES.index("Ranging")
CFG = StrategyConfig(atr_period=3, breakout_window=3, volume_window=3, max_hold_bars=5)


def strategy() -> ShardStrategy:
    return ShardStrategy(Universe(["AAA"]), CFG, shard=0)


def step(s: ShardStrategy, t: int, h: float, lo: float, c: float, v: float, regime: int = UP):
    one = np.ones(1, dtype=bool)
    probs = np.full((1, 4), 0.25, dtype=np.float32)
    return s.on_bars(
        t,
        one,
        np.array([h]),
        np.array([lo]),
        np.array([c]),
        np.array([v]),
        np.array([regime], dtype=np.uint8),
        probs,
    )


def warm(s: ShardStrategy) -> None:
    for t in range(4):
        entries, exits, _ = step(s, t, 101.0, 99.0, 100.0, 1000.0)
        assert entries == [] and exits == []


def test_breakout_with_volume_in_an_uptrend_enters_with_a_transparent_confidence() -> None:
    s = strategy()
    warm(s)
    entries, _, _ = step(s, 10, 103.0, 100.0, 102.0, 5000.0)
    (e,) = entries
    assert e.symbol == "AAA" and e.ref_price == 102.0
    # ATR after warm-up is 2 (all TRs 2), then Wilder: (2*2 + 3)/3 = 7/3.
    atr = 7 / 3
    strength = min(1.0, (102.0 - 101.0) / atr)
    # Volume 5000 is above all three previous -> percentile 100; no S/R levels yet.
    assert e.confidence == pytest.approx(0.30 + 0.30 * strength + 0.25 + 0.15)
    assert e.stop_price == pytest.approx(102.0 - 1.5 * atr)
    assert s.pending_entry[0]


def test_no_entry_without_volume_confirmation_or_outside_the_entry_regimes() -> None:
    s = strategy()
    warm(s)
    assert step(s, 10, 103.0, 100.0, 102.0, 10.0)[0] == []  # low volume
    s2 = strategy()
    warm(s2)
    assert step(s2, 10, 103.0, 100.0, 102.0, 5000.0, regime=RANGE)[0] == []


def test_fill_sets_stop_and_target_then_stop_exit_closes_the_trade() -> None:
    s = strategy()
    warm(s)
    (e,) = step(s, 10, 103.0, 100.0, 102.0, 5000.0)[0]
    assert s.on_fill(e.intent_id, 10, 102.5, 1.0, 0, ts=11) is None
    atr = 7 / 3
    assert s.stop[0] == pytest.approx(102.5 - 1.5 * atr)
    assert s.target[0] == pytest.approx(102.5 + 3.0 * atr)
    _, exits, _ = step(s, 11, 103.0, 98.0, 99.0, 1000.0)  # low 98 <= stop 99.0
    (x,) = exits
    assert x.reason == "stop" and x.quantity == 10
    closed = s.on_fill(x.intent_id, 10, 98.5, 1.0, 0, ts=12)
    assert closed is not None
    assert closed.pnl == pytest.approx(10 * (98.5 - 102.5) - 2.0)
    assert closed.exit_reason == "stop" and closed.bars_held == 1
    assert closed.features["volume_pct"] == 100.0
    assert s.quantity[0] == 0 and not s.trades


def test_regime_change_and_max_hold_exit() -> None:
    s = strategy()
    warm(s)
    (e,) = step(s, 10, 103.0, 100.0, 102.0, 5000.0)[0]
    s.on_fill(e.intent_id, 10, 102.0, 0.0, 0, ts=11)
    _, exits, _ = step(s, 11, 103.0, 101.0, 102.0, 1000.0, regime=RANGE)
    assert exits[0].reason == "regime_change"

    s = strategy()
    warm(s)
    (e,) = step(s, 10, 103.0, 100.0, 102.0, 5000.0)[0]
    s.on_fill(e.intent_id, 10, 102.0, 0.0, 0, ts=11)
    fired = []
    for t in range(11, 20):
        _, exits, _ = step(s, t, 102.5, 101.5, 102.0, 1000.0)
        fired += [(t, x.reason) for x in exits]
    # Held from the close of bar 11; the 5th close in the trade is bar 15. Nobody answers
    # the exit here, so after the grace period it is forgotten and fires again.
    assert fired[0] == (15, "max_hold")
    assert fired[1] == (15 + ORPHAN_GRACE_BARS + 1, "max_hold")
    assert s.counters.orphaned_orders == 1


def test_denied_entry_clears_pending_so_the_next_signal_can_fire() -> None:
    s = strategy()
    warm(s)
    (e,) = step(s, 10, 103.0, 100.0, 102.0, 5000.0)[0]
    s.on_denied(e.intent_id, ts=11)
    assert not s.pending_entry[0] and not s.trades
    assert s.counters.denied == 1
    assert len(step(s, 11, 105.0, 102.0, 104.5, 9000.0)[0]) == 1


def test_exit_while_entry_partially_filled_cancels_the_rest() -> None:
    s = strategy()
    warm(s)
    (e,) = step(s, 10, 103.0, 100.0, 102.0, 5000.0)[0]
    s.on_fill(e.intent_id, 4, 102.0, 0.0, 6, ts=11)  # 6 still working
    _, exits, cancels = step(s, 11, 103.0, 90.0, 95.0, 1000.0)
    assert [c.order_id for c in cancels] == [e.intent_id]
    (x,) = exits
    assert x.quantity == 4
    assert s.on_fill(x.intent_id, 4, 95.0, 0.0, 0, ts=12) is None  # entry still open
    closed = s.on_canceled(e.intent_id, ts=12)
    assert closed is not None and closed.quantity == 4


def test_unknown_order_events_are_counted_not_fatal() -> None:
    s = strategy()
    assert s.on_fill("nope", 1, 1.0, 0.0, 0, ts=0) is None
    assert s.counters.unknown_order_events == 1


def test_unfilled_entry_is_canceled_after_the_timeout_and_forgotten_if_never_answered() -> None:
    s = strategy()
    warm(s)
    (e,) = step(s, 10, 103.0, 100.0, 102.0, 5000.0)[0]
    # Bar 11: the order's one bar to fill. Bar 12: stale -> canceled.
    assert step(s, 11, 101.5, 100.5, 101.0, 1000.0)[2] == []
    _, _, cancels = step(s, 12, 101.5, 100.5, 101.0, 1000.0)
    assert [c.order_id for c in cancels] == [e.intent_id]
    assert s.pending_entry[0]
    for t in range(13, 13 + ORPHAN_GRACE_BARS):
        step(s, t, 101.5, 100.5, 101.0, 1000.0)
    # No OrderCanceled ever came back: the order is forgotten, the symbol is free again.
    assert not s.pending_entry[0] and not s.orders and not s.trades


def test_per_regime_parameters_set_stop_target_and_hold() -> None:
    from sovereign.domain.settings import RegimeOverrides

    cfg = StrategyConfig(
        atr_period=3,
        breakout_window=3,
        volume_window=3,
        max_hold_bars=5,
        entry_regimes=("TrendingUp", "Volatile"),
        per_regime={"Volatile": RegimeOverrides(stop_atr_mult=2.0, max_hold_bars=2)},
    )
    s = ShardStrategy(Universe(["AAA"]), cfg, shard=0)
    warm(s)
    volatile = REGIME_NAMES.index("Volatile")
    (e,) = step(s, 10, 103.0, 100.0, 102.0, 5000.0, regime=volatile)[0]
    atr = 7 / 3
    assert e.stop_price == pytest.approx(102.0 - 2.0 * atr)
    s.on_fill(e.intent_id, 10, 102.0, 0.0, 0, ts=11)
    assert s.stop[0] == pytest.approx(102.0 - 2.0 * atr)
    assert s.target[0] == pytest.approx(102.0 + 3.0 * atr)  # not overridden: the general 3
    exits = [step(s, t, 102.5, 101.5, 102.0, 1000.0, regime=volatile)[1] for t in (11, 12)]
    assert exits[0] == [] and exits[1][0].reason == "max_hold"


def test_an_entry_filled_after_its_cancel_is_booked_and_sold_at_the_next_close() -> None:
    """A broker may report a fill after it confirmed the cancel: the shares are ours."""
    s = strategy()
    warm(s)
    (e,) = step(s, 10, 103.0, 100.0, 102.0, 5000.0)[0]
    assert s.on_canceled(e.intent_id, ts=11) is None  # the entry never filled: no trade
    assert not s.trades and not s.pending_entry[0]
    assert s.on_external_fill("AAA", "BUY", 7, 102.2, 1.0, ts=11) is None
    assert s.quantity[0] == 7 and s.counters.late_entry_fills == 1
    _, exits, _ = step(s, 11, 102.5, 101.5, 102.0, 1000.0)  # no stop, target or timeout
    (x,) = exits
    assert x.reason == "late_fill" and x.quantity == 7
    closed = s.on_fill(x.intent_id, 7, 102.0, 1.0, 0, ts=12)
    assert closed is not None and closed.quantity == 7
    assert closed.exit_reason == "late_fill" and closed.features["late_fill"] is True
    assert closed.pnl == pytest.approx(7 * (102.0 - 102.2) - 2.0)
    assert s.quantity[0] == 0 and not s.trades and not s.exit_late_fill[0]
    # The symbol trades normally again.
    assert len(step(s, 12, 106.0, 103.0, 105.5, 9000.0)[0]) == 1


def deliver_fill(
    s: ShardStrategy, order_id: str, side: str, q: int, price: float, leaves: int, ts: int
):
    """Route a fill the way ShardActor does: to its live order, or as an external fill."""
    if order_id in s.orders:
        return s.on_fill(order_id, q, price, 0.0, leaves, ts=ts)
    return s.on_external_fill("AAA", side, q, price, 0.0, ts=ts)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("fill_entry"), st.integers(1, 10)),
            st.tuples(st.just("cancel_entry"), st.just(0)),
            st.tuples(st.just("late_entry_fill"), st.integers(1, 10)),
            st.tuples(st.just("bar"), st.integers(0, 2)),
            st.tuples(st.just("fill_exit"), st.integers(1, 10)),
        ),
        max_size=30,
    )
)
def test_no_fill_is_ever_dropped_whatever_order_the_events_come_in(actions) -> None:
    """Fills on time, fills after a cancel, partial fills, forgotten orders and exits in any
    order: the strategy's position is always the net of every fill it was told about, and
    once it is flat every share bought is in a closed trade."""
    s = strategy()
    warm(s)
    (e,) = step(s, 10, 103.0, 100.0, 102.0, 5000.0)[0]
    entry, entry_left, entry_live = e.intent_id, 10, True
    exits: dict[str, int] = {}  # exit order id -> shares still to sell
    net = bought = closed_qty = 0
    t = 11
    for kind, n in actions:
        closed = None
        if kind == "fill_entry" and entry_live:
            q = min(n, entry_left)
            entry_left -= q
            closed = deliver_fill(s, entry, "BUY", q, 102.0, entry_left, t)
            net, bought = net + q, bought + q
            entry_live = entry_left > 0
        elif kind == "cancel_entry" and entry_live:
            closed = s.on_canceled(entry, ts=t)
            entry_live = False
        elif kind == "late_entry_fill" and not entry_live and entry_left > 0:
            # The broker reports part of the canceled entry as filled after all.
            q = min(n, entry_left)
            entry_left -= q
            closed = deliver_fill(s, entry, "BUY", q, 102.0, 0, t)
            net, bought = net + q, bought + q
        elif kind == "bar":
            low = (101.5, 90.0, 101.5)[n]  # 90 is below any stop
            _, new_exits, cancels = step(s, t, 102.5, low, 102.0, 1000.0)
            exits.update({x.intent_id: x.quantity for x in new_exits})
            if entry_live and any(c.order_id == entry for c in cancels):
                closed = s.on_canceled(entry, ts=t)
                entry_live = False
            t += 1
        elif kind == "fill_exit" and exits:
            order_id, left = next(iter(exits.items()))
            q = min(n, left, net)
            if q == 0:
                continue
            exits[order_id] = left - q
            if exits[order_id] == 0:
                del exits[order_id]
            closed = deliver_fill(s, order_id, "SELL", q, 101.0, left - q, t)
            net -= q
        if closed is not None:
            closed_qty += closed.quantity
        assert int(s.quantity[0]) == net
        assert s.counters.unknown_order_events == 0
    if net == 0 and not s.trades:
        assert closed_qty == bought


def test_the_report_says_how_many_late_and_unmatched_order_events_there_were() -> None:
    from sovereign.messages import ShardReport
    from sovereign.session import _order_event_notes

    def report(shard: int, **events: int) -> ShardReport:
        return ShardReport(
            msg_id=f"r{shard}",
            ts_event=0,
            ts_init=0,
            shard=shard,
            symbols=1,
            bars=1,
            rejected_bars={},
            intents=0,
            trades_closed=0,
            open_trades=0,
            order_events=events,
        )

    notes = _order_event_notes([report(0, late_entry_fills=2), report(1, late_entry_fills=1)])
    assert notes == [
        "Entries filled after they were canceled: 3 fills, booked into their trades and "
        "sold at the next close."
    ]
    assert _order_event_notes([report(0)]) == []
