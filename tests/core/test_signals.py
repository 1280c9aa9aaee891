"""The shard's baseline strategy: entries, exits, and the trade book."""

from __future__ import annotations

import numpy as np
import pytest

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
    from sovereign.config import RegimeOverrides

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
