"""The simulated broker's fill model, commissions, volume cap and accounting."""

from __future__ import annotations

import math

import pytest

from sovereign.brokers.sim import SimBroker, commission_for
from sovereign.config import SimConfig
from sovereign.messages import OrderAccepted, OrderCanceled, OrderFilled
from tests.kit import one_bar, submit

T0 = 1_700_000_000 * 1_000_000_000
MIN = 60 * 1_000_000_000


def broker(**kw: float) -> SimBroker:
    return SimBroker(SimConfig(**kw), initial_cash=100_000.0)


def test_commission_is_ibkr_fixed_with_minimum_and_cap() -> None:
    cfg = SimConfig()
    assert commission_for(100, 50.0, cfg) == pytest.approx(1.00)  # 0.50 -> the $1 minimum
    assert commission_for(1_000, 50.0, cfg) == pytest.approx(5.00)  # 1000 x 0.005
    # 1 % of value caps it: 300 shares at $0.10 = $30 value -> at most $0.30
    assert commission_for(300, 0.10, cfg) == pytest.approx(0.30)


def test_market_order_fills_at_next_open_with_slippage() -> None:
    b = broker(slippage_bps=10)
    b.on_bars(one_bar(T0, "AAPL", 100, 101, 99, 100.5))
    events = b.submit(submit("o1", "AAPL", "BUY", 10, now=T0 + MIN), now_ns=T0 + MIN)
    assert isinstance(events[0], OrderAccepted)
    fills = b.on_bars(one_bar(T0 + MIN, "AAPL", 102, 103, 101, 102.5))
    assert len(fills) == 1
    f = fills[0]
    assert isinstance(f, OrderFilled)
    assert f.price == pytest.approx(102 * 1.001)
    assert f.quantity == 10 and f.leaves_quantity == 0
    assert f.commission == pytest.approx(1.0)
    assert b.portfolio.cash == pytest.approx(100_000 - 10 * 102 * 1.001 - 1.0)
    # Marked to the close of the fill bar.
    assert b.account(T0).equity == pytest.approx(b.portfolio.cash + 10 * 102.5)


def test_order_does_not_fill_on_a_bar_that_started_before_it_was_sent() -> None:
    b = broker()
    b.submit(submit("o1", "AAPL", "BUY", 10, now=T0 + 2 * MIN), now_ns=T0 + 2 * MIN)
    assert b.on_bars(one_bar(T0 + MIN, "AAPL", 100, 101, 99, 100)) == []
    assert len(b.on_bars(one_bar(T0 + 2 * MIN, "AAPL", 100, 101, 99, 100))) == 1


def test_sell_slippage_is_against_us() -> None:
    b = broker(slippage_bps=10)
    b.submit(submit("o1", "AAPL", "BUY", 10), now_ns=0)
    b.on_bars(one_bar(T0, "AAPL", 100, 101, 99, 100))
    b.submit(submit("o2", "AAPL", "SELL", 10, purpose="CLOSE"), now_ns=T0)
    (fill,) = b.on_bars(one_bar(T0 + MIN, "AAPL", 110, 111, 109, 110))
    assert fill.price == pytest.approx(110 * 0.999)
    assert b.portfolio.quantity("AAPL") == 0
    # Realised P&L against the average entry price, commissions apart.
    assert b.portfolio.realized_pnl == pytest.approx(10 * (110 * 0.999 - 100 * 1.001))
    assert b.portfolio.commissions == pytest.approx(2.0)


def test_buy_limit_fills_only_when_traded_through_at_the_better_of_open_and_limit() -> None:
    b = broker()
    b.submit(submit("o1", "AAPL", "BUY", 5, order_type="LIMIT", limit_price=95.0), now_ns=0)
    assert b.on_bars(one_bar(T0, "AAPL", 100, 101, 96, 98)) == []  # low 96 > 95
    (fill,) = b.on_bars(one_bar(T0 + MIN, "AAPL", 97, 97, 94, 95))
    assert fill.price == pytest.approx(95.0)
    b.submit(submit("o2", "AAPL", "BUY", 5, order_type="LIMIT", limit_price=95.0), now_ns=T0)
    (gap,) = b.on_bars(one_bar(T0 + 2 * MIN, "AAPL", 90, 92, 89, 91))
    assert gap.price == pytest.approx(90.0)  # gapped below the limit: filled at the open


def test_sell_limit_fills_at_max_of_open_and_limit() -> None:
    b = broker()
    b.submit(submit("o1", "AAPL", "BUY", 5), now_ns=0)
    b.on_bars(one_bar(T0, "AAPL", 100, 100, 100, 100))
    b.submit(submit("o2", "AAPL", "SELL", 5, order_type="LIMIT", limit_price=105.0), now_ns=T0)
    assert b.on_bars(one_bar(T0 + MIN, "AAPL", 101, 104, 100, 103)) == []
    (fill,) = b.on_bars(one_bar(T0 + 2 * MIN, "AAPL", 107, 108, 106, 107))
    assert fill.price == pytest.approx(107.0)


def test_fill_is_capped_by_bar_volume_and_the_rest_carries_over() -> None:
    b = broker(max_volume_share=0.1)
    b.submit(submit("o1", "AAPL", "BUY", 250), now_ns=0)
    f1 = b.on_bars(one_bar(T0, "AAPL", 10, 10, 10, 10, v=1000))  # cap 100
    f2 = b.on_bars(one_bar(T0 + MIN, "AAPL", 10, 10, 10, 10, v=0))  # nothing trades
    f3 = b.on_bars(one_bar(T0 + 2 * MIN, "AAPL", 10, 10, 10, 10, v=1000))
    f4 = b.on_bars(one_bar(T0 + 3 * MIN, "AAPL", 10, 10, 10, 10, v=1000))
    assert [f.quantity for f in f1 + f2 + f3 + f4] == [100, 100, 50]
    assert [f.leaves_quantity for f in f1 + f3 + f4] == [150, 50, 0]
    assert len({f.execution_id for f in f1 + f3 + f4}) == 3
    assert b.working_orders == 0
    assert b.counters["zero_volume_bars"] == 1


def test_unknown_volume_is_not_capped_and_is_counted() -> None:
    b = broker(max_volume_share=0.1)
    b.submit(submit("o1", "AAPL", "BUY", 250), now_ns=0)
    (f,) = b.on_bars(one_bar(T0, "AAPL", 10, 10, 10, 10, v=math.nan))
    assert f.quantity == 250
    assert b.counters["uncapped_unknown_volume"] == 1


def test_cancel_stops_the_rest_of_a_partially_filled_order() -> None:
    b = broker(max_volume_share=0.1)
    b.submit(submit("o1", "AAPL", "BUY", 250), now_ns=0)
    b.on_bars(one_bar(T0, "AAPL", 10, 10, 10, 10, v=1000))
    (c,) = b.cancel("o1", T0)
    assert isinstance(c, OrderCanceled) and c.filled_quantity == 100
    assert b.on_bars(one_bar(T0 + MIN, "AAPL", 10, 10, 10, 10, v=1000)) == []
    assert b.cancel("o1", T0) == []  # already gone
    assert b.portfolio.quantity("AAPL") == 100


def test_duplicate_working_order_id_is_rejected() -> None:
    b = broker()
    b.submit(submit("o1", "AAPL", "BUY", 1), now_ns=0)
    (ev,) = b.submit(submit("o1", "AAPL", "BUY", 1), now_ns=0)
    assert ev.reason_code == "DUPLICATE_ORDER_ID"  # type: ignore[attr-defined]


def test_orders_for_other_symbols_wait_for_their_own_bars() -> None:
    b = broker()
    b.submit(submit("o1", "MSFT", "BUY", 1), now_ns=0)
    assert b.on_bars(one_bar(T0, "AAPL", 10, 10, 10, 10)) == []
    assert len(b.on_bars(one_bar(T0 + MIN, "MSFT", 10, 10, 10, 10))) == 1
